"""The ``mlx`` inference engine: one shard on MLX (Metal on Apple silicon, CPU elsewhere), per-request KV
caches, work on one MLX thread one forward at a time."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread
import numpy as np

from exo_core.engine import MemoryUsage, ShardInfo, check_input, check_steps
from exo_core.models.request_cache import RequestCaches
from exo_core.models.source import ModelSource, load_config
from exo_engine_mlx import thread as mlx_thread
from exo_engine_mlx.model import KVCache, ShardModel
from exo_engine_mlx.quant import source_quant
from exo_engine_mlx.runtime import BlasChoice, import_mlx, release_freed_memory, second_cpu_stream
from exo_engine_mlx.weights import Representation, load_params

if TYPE_CHECKING:
    import mlx.core as mx

log = logging.getLogger(__name__)

RepresentationChoice = Literal["auto", "dense", "quantized"]


def on_gpu() -> bool:
    """MLX runs on a GPU (Metal) here."""
    import mlx.core as mx

    return bool(mx.default_device() == mx.gpu)


def choose_representation(choice: RepresentationChoice, source: ModelSource, gpu: bool) -> Representation:
    """Resolve ``auto``: on a GPU keep a quantized source quantized (less memory traffic, fast kernels); on
    MLX's CPU backend use dense float32 (its quantized matmul is single-threaded: see docs/engines.md)."""
    if choice != "auto":
        return choice
    if gpu and source_quant(source, "layers.0.q") is not None:
        return "quantized"
    return "dense"


class MlxEngine:
    """Implements :class:`exo_core.engine.InferenceEngine` on MLX.

    Args:
        representation: ``dense`` float32, ``quantized`` (MLX affine, bits/group from the source) or ``auto``
            (see :func:`choose_representation`).
        max_context: cap on positions per request (0: the model's context length).
        cache_step: the KV cache grows in steps of this many positions.
        compile: ``mx.compile`` the fixed-shape half of each block.
        split_matmuls: on MLX's CPU backend with two or more cores, split large dense matrices in two and
            run the halves of each product on two CPU streams (see :class:`exo_engine_mlx.weights.Linear`).
        blas / blas_path: how MLX is imported if nothing imported it yet (see
            :func:`exo_engine_mlx.runtime.import_mlx`).

    Raises:
        RuntimeError: MLX cannot be imported here.
    """

    #: passes worth running at once: all MLX work runs on one thread (``exo_engine_mlx.thread``), so a
    #: second concurrent pass only splits a batch (see ``exo_core.orchestration.batching.StepBatcher``)
    concurrent_passes = 1

    def __init__(
        self,
        *,
        representation: RepresentationChoice = "auto",
        max_context: int = 0,
        cache_step: int = 256,
        compile: bool = True,
        split_matmuls: bool = True,
        blas: BlasChoice = "auto",
        blas_path: str = "",
    ) -> None:
        reason = import_mlx(blas, blas_path)
        if reason is not None:
            raise RuntimeError(reason)
        if max_context < 0 or cache_step < 1:
            raise ValueError("max_context must be >= 0 and cache_step >= 1")
        if representation not in ("auto", "dense", "quantized"):
            raise ValueError(f"representation must be auto, dense or quantized, not {representation!r}")
        self.representation_choice: RepresentationChoice = representation
        self.cache_step = cache_step
        self.compile = compile
        self.split_matmuls = split_matmuls
        self._model: ShardModel | None = None
        self._info: ShardInfo | None = None
        self._key: tuple[ModelSource, int, int] | None = None
        self._caches: RequestCaches[KVCache] = RequestCaches(max_context)
        # MLX work (loading, every forward) runs on the process's one MLX thread, one call at a time and in
        # order (see exo_engine_mlx.thread): its streams exist on that thread only, and the caches stay
        # consistent
        self._load_lock = anyio.Lock()

    @property
    def max_context(self) -> int:
        """Cap on positions per request (0: the model's context length)."""
        return self._caches.max_context

    @property
    def representation(self) -> Representation | None:
        """The representation of the loaded shard (``None`` before :meth:`load`)."""
        return None if self._model is None else self._model.params.representation

    async def load(self, source: ModelSource, first_layer: int, last_layer: int, n_layers_total: int) -> None:
        """See :meth:`exo_core.engine.InferenceEngine.load`."""
        async with self._load_lock:
            key = (source, first_layer, last_layer)
            if self._key == key:
                return
            config = await anyio.to_thread.run_sync(load_config, source)
            if config.n_layers != n_layers_total:
                raise ValueError(
                    f"plan says {source.model_id} has {n_layers_total} layers "
                    f"but the model has {config.n_layers}"
                )
            config.check_layer_range(first_layer, last_layer)
            old, self._model = self._model, None  # release the old shard's memory before reading the new one
            replacing = old is not None
            if old is not None:
                old.close()
            del old
            self._caches.clear()
            self._info = self._key = None
            model = await mlx_thread.run(self._build, source, first_layer, last_layer)
            if replacing:  # not on a first load: nothing to give back, and decode ran ~2% slower after it
                await mlx_thread.run(release_freed_memory)
            self._model, self._key = model, key
            self._info = ShardInfo(source.model_id, first_layer, last_layer, config.n_layers)

    def _build(self, source: ModelSource, first: int, last: int) -> ShardModel:
        config = load_config(source)
        rep = choose_representation(self.representation_choice, source, on_gpu())
        started = time.perf_counter()
        params = load_params(source, first, last, rep, split_stream=self._split_stream())
        log.info(
            "mlx: loaded %s layers %d..%d (%s, %.1f MB) in %.2f s",
            source.model_id,
            first,
            last,
            rep,
            params.nbytes() / 1e6,
            time.perf_counter() - started,
        )
        return ShardModel(
            config, params, is_first=first == 0, is_last=last == config.n_layers - 1, compile=self.compile
        )

    def _split_stream(self) -> mx.Stream | None:
        """The second CPU stream for split matmuls, or ``None`` when they are off or would not help (on
        Metal, or with a single core)."""
        if not self.split_matmuls or on_gpu() or (os.cpu_count() or 1) < 2:
            return None
        return second_cpu_stream()

    async def forward(self, request_id: str, x: np.ndarray, *, all_logits: bool = False) -> np.ndarray:
        """See :meth:`exo_core.engine.InferenceEngine.forward`."""
        model = self._model
        if model is None:
            raise RuntimeError("the mlx engine has no model loaded; call load() first")
        x = check_input(x, model.config, is_first=model.is_first)
        if model.is_first:
            x = x.astype(np.int32)
        return await mlx_thread.run(model.forward, self._cache(model, request_id), x, all_logits)

    async def forward_batch(self, steps: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """See :meth:`exo_core.engine.BatchingEngine.forward_batch`: one pass, each product run once over
        all the rows (a batched row's numbers can differ from its lone step's in the last bits)."""
        model = self._model
        if model is None:
            raise RuntimeError("the mlx engine has no model loaded; call load() first")
        x = check_steps(steps, model.config, is_first=model.is_first)
        caches = [self._cache(model, rid) for rid, _ in steps]
        out = await mlx_thread.run(model.forward_steps, caches, x)
        return [out[b] if model.is_last else out[b : b + 1] for b in range(len(steps))]

    def _cache(self, model: ShardModel, request_id: str) -> KVCache:
        """The request's cache, created empty (sized for this engine's context limit) on first use."""
        return self._caches.get_or_create(
            request_id, model.config.context_length, lambda limit: model.new_cache(self.cache_step, limit)
        )

    async def free(self, request_id: str) -> None:
        """See :meth:`exo_core.engine.InferenceEngine.free`."""
        self._caches.free(request_id)

    def position(self, request_id: str) -> int:
        """See :meth:`exo_core.engine.InferenceEngine.position`."""
        return self._caches.position(request_id)

    def shard(self) -> ShardInfo | None:
        """See :meth:`exo_core.engine.InferenceEngine.shard`."""
        return self._info

    def memory(self) -> MemoryUsage:
        """See :meth:`exo_core.engine.InferenceEngine.memory`."""
        weights = self._model.params.nbytes() if self._model is not None else 0
        return MemoryUsage(weights=weights, kv_cache=self._caches.nbytes())
