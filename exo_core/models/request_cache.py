"""Per-request KV caches of an inference engine: the bookkeeping every engine needs, kept in one place.

An engine (see :class:`exo_core.engine.InferenceEngine`) holds one KV cache per request id on its loaded
shard. :class:`RequestCaches` is that map: a request's cache is created empty on its first forward, sized
for the engine's context limit (the model's context length, capped by ``max_context``); ``free`` drops it,
``position`` reports how far it got (0 for an unknown id), ``clear`` drops them all when another shard is
loaded, and ``nbytes`` is the KV-cache figure of ``memory()``. Nothing is evicted on its own: the node frees
a request when it ends.

What a cache holds (NumPy or MLX arrays) and how it grows is the engine's own; caches only need a ``pos``
(positions cached) and an ``nbytes``. :func:`check_room` is the context-overflow check their ``reserve``
runs before growing, so every engine refuses an overflow with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class RequestCache(Protocol):
    """What :class:`RequestCaches` reads of an engine's cache."""

    @property
    def pos(self) -> int:
        """Positions cached so far (the next position to run)."""

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds right now."""


CacheT = TypeVar("CacheT", bound=RequestCache)


def check_room(pos: int, n: int, max_len: int) -> None:
    """Refuse ``n`` more positions after the ``pos`` cached ones when they would pass ``max_len``.

    Raises:
        ValueError: ``context overflow: {pos} cached + {n} new positions > limit {max_len}``.
    """
    if pos + n > max_len:
        raise ValueError(f"context overflow: {pos} cached + {n} new positions > limit {max_len}")


class RequestCaches(Generic[CacheT]):
    """The caches of the requests an engine is serving, by request id.

    Not locked: engines create and free caches on the event loop; a forward runs in a worker thread with
    the cache it was handed.

    Args:
        max_context: cap on positions per request (0: the model's context length).

    Raises:
        ValueError: ``max_context`` is negative.
    """

    def __init__(self, max_context: int = 0) -> None:
        if max_context < 0:
            raise ValueError("max_context must be >= 0")
        self.max_context = max_context
        self._caches: dict[str, CacheT] = {}

    def limit(self, context_length: int) -> int:
        """Positions one request may cache on a model of ``context_length``."""
        return min(context_length, self.max_context) if self.max_context else context_length

    def get_or_create(
        self, request_id: str, context_length: int, new_cache: Callable[[int], CacheT]
    ) -> CacheT:
        """The cache of ``request_id``, created on first use as ``new_cache(limit)`` where ``limit`` is
        :meth:`limit` of the loaded model's ``context_length``."""
        cache = self._caches.get(request_id)
        if cache is None:
            cache = new_cache(self.limit(context_length))
            self._caches[request_id] = cache
        return cache

    def free(self, request_id: str) -> None:
        """Drop the cache of ``request_id`` (unknown ids are ignored)."""
        self._caches.pop(request_id, None)

    def position(self, request_id: str) -> int:
        """Positions ``request_id`` has cached (0 if unknown)."""
        cache = self._caches.get(request_id)
        return 0 if cache is None else cache.pos

    def clear(self) -> None:
        """Drop every cache (the shard they belong to is being replaced)."""
        self._caches.clear()

    def nbytes(self) -> int:
        """Bytes held by all the caches."""
        return sum(c.nbytes for c in list(self._caches.values()))

    def __len__(self) -> int:
        return len(self._caches)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._caches
