"""The ``numpy`` inference engine: one shard, per-request KV caches, work in threads.

Two weight representations share the attention, RoPE and KV cache code: quantized GGUF blocks multiplied
on onnxruntime's 4-/8-bit kernels (:class:`~exo_engine_numpy.quant_shard.QuantShard`, the default for
quantized files) and float32 NumPy (:class:`~exo_engine_numpy.shard.NumpyShard`, the exact reference).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import anyio.to_thread
import numpy as np

from exo_core.engine import MemoryUsage, ShardInfo, check_input, check_steps
from exo_core.models.request_cache import RequestCaches
from exo_core.models.source import ModelSource, load_config
from exo_engine_numpy.quant_shard import QuantShard, holds_quantized
from exo_engine_numpy.shard import KVCache, NumpyShard

log = logging.getLogger(__name__)


class NumpyEngine:
    """Implements :class:`exo_core.engine.InferenceEngine` with NumPy and onnxruntime.

    Args:
        weights: ``auto`` (quantized blocks when the source stores its matrices quantized, else float32),
            ``float32`` or ``quantized`` (float matrices become 8-bit blocks at load).
        max_context: cap on positions per request (0: the model's context length).
        initial_cache: positions preallocated per request before the cache grows by doubling.
    """

    def __init__(self, *, weights: str = "auto", max_context: int = 0, initial_cache: int = 64) -> None:
        if max_context < 0 or initial_cache < 1:
            raise ValueError("max_context must be >= 0 and initial_cache >= 1")
        if weights not in ("auto", "float32", "quantized"):
            raise ValueError(f"weights must be auto, float32 or quantized, not {weights!r}")
        self.weights = weights
        self.initial_cache = initial_cache
        #: the representation of the loaded shard (``float32`` or ``quantized``), ``None`` before load
        self.representation: str | None = None
        self._shard: NumpyShard | QuantShard | None = None
        self._info: ShardInfo | None = None
        self._key: tuple[ModelSource, int, int] | None = None
        self._caches: RequestCaches[KVCache] = RequestCaches(max_context)
        self._load_lock = anyio.Lock()

    @property
    def max_context(self) -> int:
        """Cap on positions per request (0: the model's context length)."""
        return self._caches.max_context

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
            self._shard = None  # release the old shard's memory before reading the new one
            self._caches.clear()
            self._info = self._key = None
            shard = await anyio.to_thread.run_sync(self._load_shard, source, first_layer, last_layer)
            self._shard, self._key = shard, key
            self._info = ShardInfo(source.model_id, first_layer, last_layer, config.n_layers)

    def _load_shard(self, source: ModelSource, first: int, last: int) -> NumpyShard | QuantShard:
        quantized = self.weights == "quantized" or (self.weights == "auto" and holds_quantized(source))
        self.representation = "quantized" if quantized else "float32"
        if quantized:
            return QuantShard(source, first, last, force=self.weights == "quantized")
        return NumpyShard(source, first, last)

    async def forward(self, request_id: str, x: np.ndarray, *, all_logits: bool = False) -> np.ndarray:
        """See :meth:`exo_core.engine.InferenceEngine.forward`."""
        shard = self._shard
        if shard is None:
            raise RuntimeError("the numpy engine has no model loaded; call load() first")
        x = check_input(x, shard.config, is_first=shard.is_first)
        cache = self._cache(shard, request_id)
        return await anyio.to_thread.run_sync(shard.forward, cache, x, all_logits)

    async def forward_batch(self, steps: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """See :meth:`exo_core.engine.BatchingEngine.forward_batch`: one pass, weights read once."""
        shard = self._shard
        if shard is None:
            raise RuntimeError("the numpy engine has no model loaded; call load() first")
        x = check_steps(steps, shard.config, is_first=shard.is_first)
        caches = [self._cache(shard, rid) for rid, _ in steps]
        out = await anyio.to_thread.run_sync(shard.forward_steps, caches, x)
        return [out[b] if shard.is_last else out[b : b + 1] for b in range(len(steps))]

    def _cache(self, shard: NumpyShard | QuantShard, request_id: str) -> KVCache:
        """The request's cache, created empty (sized for this engine's context limit) on first use."""
        return self._caches.get_or_create(
            request_id, shard.config.context_length, lambda limit: shard.new_cache(self.initial_cache, limit)
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
        weights = self._shard.nbytes() if self._shard is not None else 0
        return MemoryUsage(weights=weights, kv_cache=self._caches.nbytes())
