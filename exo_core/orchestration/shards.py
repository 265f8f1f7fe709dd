"""The engines of this node: one per loaded shard, loaded once and kept across requests.

A shard is ``(model_id, first_layer, last_layer)``. The plan of a request names the shard this node runs;
the first request that needs it loads it, concurrent ones wait for that load, and later ones reuse it.
Different plans (the cluster changed) may need another shard: it is loaded beside the old one, and the
least recently used shard beyond ``max_shards`` is dropped once no request uses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from exo_core.engine import InferenceEngine
from exo_core.models.config import ModelConfig
from exo_core.models.source import ModelSource, ensure_layers, head_in_layers, load_config, stored_bytes
from exo_core.orchestration.catalog import Catalog

log = logging.getLogger(__name__)

ShardKey = tuple[str, int, int]


@dataclass
class _Slot:
    engine: InferenceEngine
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    loaded: bool = False
    requests: set[str] = field(default_factory=set)
    used_at: float = field(default_factory=time.monotonic)


def shard_stored_bytes(source: ModelSource, config: ModelConfig, first: int, last: int) -> float:
    """Stored bytes of layers ``first..last`` (and of the output head when ``last`` is the model's last
    layer), as the plan counts them: the model's stored bytes over its blocks plus the head's weight in
    blocks (:func:`~exo_core.models.source.head_in_layers`). 0 when the stored size is unknown."""
    total = stored_bytes(source)
    if total <= 0:
        return 0.0
    head = head_in_layers(source, config)
    units = last - first + 1 + (head if last == config.n_layers - 1 else 0)
    return units * total / (config.n_layers + head)


def held_ratio(held: int, stored: float) -> float | None:
    """``held / stored`` when both are known."""
    return held / stored if held > 0 and stored > 0 else None


class ShardHost:
    """Builds, loads and keeps engines by shard."""

    def __init__(
        self,
        engine_factory: Callable[[], InferenceEngine],
        catalog: Catalog,
        *,
        max_shards: int = 2,
        on_held_ratio: Callable[[str, float], None] | None = None,
    ) -> None:
        """``on_held_ratio(model_id, ratio)`` hears, after each load, the bytes the engine holds per stored
        byte of its shard (see :func:`held_ratio`)."""
        self._factory = engine_factory
        self._catalog = catalog
        self._on_held_ratio = on_held_ratio
        self._slots: dict[ShardKey, _Slot] = {}
        self._max = max_shards
        self._lock = anyio.Lock()

    async def engine_for(self, key: ShardKey, request_id: str) -> InferenceEngine:
        """The loaded engine of ``key`` (loading it first if needed), registered as used by the request."""
        async with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = _Slot(self._factory())
                self._slots[key] = slot
        async with slot.lock:
            if not slot.loaded:
                model_id, first, last = key
                started = time.monotonic()
                source = await anyio.to_thread.run_sync(self._catalog.source, model_id, (first, last))
                await anyio.to_thread.run_sync(ensure_layers, source, first, last)
                config = await anyio.to_thread.run_sync(load_config, source)
                await slot.engine.load(source, first, last, config.n_layers)
                slot.loaded = True
                log.info(
                    "loaded %s layers %d..%d in %.1f s", model_id, first, last, time.monotonic() - started
                )
                if self._on_held_ratio is not None:
                    await self._report_held_ratio(slot.engine, source, config, key)
                await self._evict(keep=key)
        slot.requests.add(request_id)
        slot.used_at = time.monotonic()
        return slot.engine

    async def _report_held_ratio(
        self, engine: InferenceEngine, source: ModelSource, config: ModelConfig, key: ShardKey
    ) -> None:
        """Measure held/stored for the shard just loaded and pass it on; a failure here only costs the
        figure (logged), never the load."""
        model_id, first, last = key
        try:
            stored = await anyio.to_thread.run_sync(shard_stored_bytes, source, config, first, last)
            ratio = held_ratio(engine.memory().weights, stored)
        except Exception as exc:
            log.warning("%s layers %d..%d: no held/stored figure: %s", model_id, first, last, exc)
            return
        if ratio is not None and self._on_held_ratio is not None:
            self._on_held_ratio(model_id, ratio)

    async def free(self, request_id: str) -> None:
        """Drop the request's KV caches in every engine."""
        for slot in list(self._slots.values()):
            if request_id in slot.requests:
                slot.requests.discard(request_id)
                await slot.engine.free(request_id)

    async def _evict(self, keep: ShardKey) -> None:
        idle = sorted(
            (s.used_at, k) for k, s in self._slots.items() if k != keep and s.loaded and not s.requests
        )
        while len(self._slots) > self._max and idle:
            _, key = idle.pop(0)
            self._slots.pop(key, None)
            log.info("dropped shard %s layers %d..%d (not in the current plan)", *key)

    def describe(self) -> list[dict[str, object]]:
        """Loaded shards and their memory, for the topology."""
        out: list[dict[str, object]] = []
        for (model_id, first, last), slot in self._slots.items():
            if slot.loaded:
                mem = slot.engine.memory()
                out.append(
                    {
                        "model": model_id,
                        "first_layer": first,
                        "last_layer": last,
                        "weights_bytes": mem.weights,
                        "kv_cache_bytes": mem.kv_cache,
                        "requests": len(slot.requests),
                    }
                )
        return out
