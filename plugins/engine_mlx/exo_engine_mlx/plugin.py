"""Plugin entry point: registers the ``mlx`` engine component.

Imports stay cheap: ``mlx`` is imported only by the availability check and the factory, and on Linux a
system OpenBLAS is loaded right before that first import so MLX's CPU matmul binds to it (see
:mod:`exo_engine_mlx.blas`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.hookspecs import hookimpl
from exo_engine_mlx import thread as mlx_thread
from exo_engine_mlx.runtime import check_blas, import_mlx

if TYPE_CHECKING:
    from exo_engine_mlx.engine import MlxEngine

log = logging.getLogger(__name__)


class MlxEngineSettings(BaseSettings):
    """Settings of the mlx engine (env prefix ``EXO_ENGINE_MLX_``, flags ``--mlx-...``)."""

    model_config = SettingsConfigDict(env_prefix="EXO_ENGINE_MLX_", extra="ignore")
    cli_prefix: ClassVar[str] = "mlx-"

    representation: Literal["auto", "dense", "quantized"] = Field(
        "auto",
        description="weights: dense float32, quantized (MLX affine, as close to the source as MLX "
        "allows), or auto (quantized on Metal for quantized sources, dense on the CPU backend)",
    )
    blas: Literal["auto", "bundled"] = Field(
        "auto",
        description="Linux CPU: auto loads a system OpenBLAS before MLX (fast dense matmul); "
        "bundled keeps the wheel's reference BLAS",
    )
    blas_path: str = Field("", description="OpenBLAS to load instead of the known Debian/Ubuntu paths")
    max_context: int = Field(0, ge=0, description="max positions per request (0: the model's context length)")
    cache_step: int = Field(256, ge=1, description="the KV cache grows in steps of this many positions")
    compile: bool = Field(True, description="mx.compile the fixed-shape parts of each block")
    split_matmuls: bool = Field(
        True,
        description="CPU backend with 2+ cores: cut large matrices in two and multiply the halves on two "
        "CPU streams at once (both cores read weights; ignored on Metal)",
    )


def available() -> str | None:
    """``None`` when MLX imports here, else the reason (used by ``--inference-engine auto``)."""
    settings = MlxEngineSettings()
    return import_mlx(settings.blas, settings.blas_path)


def build(ctx: ComponentContext) -> MlxEngine:
    """Factory: an :class:`~exo_engine_mlx.engine.MlxEngine` configured from its settings."""
    settings = ctx.settings if isinstance(ctx.settings, MlxEngineSettings) else MlxEngineSettings()
    reason = import_mlx(settings.blas, settings.blas_path)
    if reason is not None:
        raise RuntimeError(reason)
    mlx_thread.call(check_blas)  # MLX work runs on the MLX thread only
    from exo_engine_mlx.engine import MlxEngine

    return MlxEngine(
        representation=settings.representation,
        max_context=settings.max_context,
        cache_step=settings.cache_step,
        compile=settings.compile,
        split_matmuls=settings.split_matmuls,
        blas=settings.blas,
        blas_path=settings.blas_path,
    )


@hookimpl
def exo_register_engine(register: RegisterComponent) -> None:
    register(
        "mlx",
        build,
        settings=MlxEngineSettings,
        available=available,
        description="MLX engine (Apple silicon GPU, Linux CPU)",
    )
