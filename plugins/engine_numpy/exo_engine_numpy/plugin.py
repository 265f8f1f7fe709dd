"""Plugin entry point: registers the ``numpy`` engine component (imports stay cheap: the engine module,
and with it NumPy work, is imported only when the engine is built)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from exo_engine_numpy.engine import NumpyEngine


class NumpyEngineSettings(BaseSettings):
    """Settings of the numpy engine (env prefix ``EXO_ENGINE_NUMPY_``, flags ``--numpy-...``)."""

    model_config = SettingsConfigDict(env_prefix="EXO_ENGINE_NUMPY_", extra="ignore")
    cli_prefix: ClassVar[str] = "numpy-"

    weights: Literal["auto", "float32", "quantized"] = Field(
        "auto",
        description="auto: quantized when the model's matrices are stored quantized (GGUF), else float32; "
        "float32: dequantize every matrix (the exact reference path); quantized: 4-/8-bit blocks "
        "always (float matrices become 8-bit blocks at load)",
    )
    max_context: int = Field(0, ge=0, description="max positions per request (0: the model's context length)")
    initial_cache: int = Field(64, ge=1, description="positions preallocated per request's KV cache")


def build(ctx: ComponentContext) -> NumpyEngine:
    """Factory: a :class:`NumpyEngine` configured from its settings."""
    from exo_engine_numpy.engine import NumpyEngine

    settings = ctx.settings if isinstance(ctx.settings, NumpyEngineSettings) else NumpyEngineSettings()
    return NumpyEngine(
        weights=settings.weights, max_context=settings.max_context, initial_cache=settings.initial_cache
    )


@hookimpl
def exo_register_engine(register: RegisterComponent) -> None:
    register(
        "numpy",
        build,
        settings=NumpyEngineSettings,
        description="NumPy engine: quantized GGUF blocks on onnxruntime kernels, or float32 (any CPU)",
    )
