"""Admission control: how many generating requests a node serves at once, how many may wait, and how
they are shared between clients.

Without a bound every request is accepted and queued inside the cluster: 256 concurrent streams once waited
up to 57 s for a first token while holding ~3.6 MB each. :class:`Admission` lets ``max_in_flight`` requests
generate, keeps up to ``max_queued`` more waiting, and refuses the rest at once with ``429`` and
``Retry-After`` (the OpenAI SDKs honour both: they wait and retry by themselves). A queued request whose
client goes away leaves the queue (its task is cancelled).

**Sharing between clients.** A client (an API key's name, else the client's address: see
:func:`exo_core.api.keys.client_of`) holds at most ``client_share`` of the slots and of the queue places, so
one client flooding the node cannot lock out the others: 256 streams from one client once made another
client's one-token chat wait 4.7 s in the queue; with the default share (3/4) two of the eight slots stay for
everyone else, and the chat is answered in well under a second. A freed slot goes to the waiting client that
holds the fewest slots (the earliest waiter on a tie); one client's own requests keep their arrival order. A
lone client therefore generates at most ``client_share`` of ``max_in_flight`` at once (its other requests
wait in the queue); ``client_share=1.0`` gives every slot to whoever comes first.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from exo_core.api.errors import APIError

log = logging.getLogger("exo_core.api")


@dataclass
class _Waiter:
    seq: int
    turn: anyio.Event = field(default_factory=anyio.Event)


class Admission:
    """Slots for generating requests (see module docstring).

    Args:
        max_in_flight: requests generating at once (>= 1).
        max_queued: requests waiting for a slot (>= 0); beyond, 429.
        client_share: the fraction (0, 1] of ``max_in_flight`` and of ``max_queued`` one client may hold
            (rounded down, at least one slot; at least one queue place when there is a queue).
        retry_after: seconds a refused client is told to wait (``Retry-After``).
    """

    def __init__(
        self, max_in_flight: int, max_queued: int, *, client_share: float = 1.0, retry_after: int = 1
    ) -> None:
        if max_in_flight < 1 or max_queued < 0 or not 0.0 < client_share <= 1.0:
            raise ValueError(
                "need max_in_flight >= 1, max_queued >= 0, 0 < client_share <= 1; "
                f"got {max_in_flight}, {max_queued}, {client_share}"
            )
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.retry_after = retry_after
        self.client_in_flight = max(1, int(client_share * max_in_flight))
        self.client_queued = max(1, int(client_share * max_queued)) if max_queued else 0
        self.refused = 0
        self._held: Counter[str] = Counter()  # client -> slots it holds
        self._waiters: dict[str, deque[_Waiter]] = {}  # client -> its requests waiting, in order
        self._seq = itertools.count()

    @property
    def in_flight(self) -> int:
        """Requests generating now."""
        return sum(self._held.values())

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return sum(len(q) for q in self._waiters.values())

    @asynccontextmanager
    async def slot(self, request_id: str, client: str = "") -> AsyncIterator[None]:
        """Hold a slot for ``client`` for the body of the ``async with``; waits in the queue when the node's
        slots, or this client's share of them, are taken.

        Raises:
            APIError: 429 ``too_many_requests`` with ``Retry-After`` when the queue, or this client's share of
                it, is full too.
        """
        if self.in_flight < self.max_in_flight and self._may_take(client) and client not in self._waiters:
            self._take(client)
        else:
            await self._wait(request_id, client)
        try:
            yield
        finally:
            self._release(client)

    def _may_take(self, client: str) -> bool:
        return self._held[client] < self.client_in_flight

    def _take(self, client: str) -> None:
        self._held[client] += 1

    async def _wait(self, request_id: str, client: str) -> None:
        mine = self._waiters.get(client)
        queued = self.queued
        if queued >= self.max_queued or (mine is not None and len(mine) >= self.client_queued):
            self.refused += 1  # the route logs the 429
            whose = (
                f"the node is busy: {self.in_flight} requests generating and {queued} waiting"
                if queued >= self.max_queued
                else f"this client has {self._held[client]} requests generating and {len(mine or ())} "
                "waiting, its share of the node"
            )
            raise APIError(
                429,
                f"{whose}; retry in {self.retry_after} s",
                code="too_many_requests",
                headers={"Retry-After": str(self.retry_after)},
            )
        waiter = _Waiter(next(self._seq))
        self._waiters.setdefault(client, deque()).append(waiter)
        log.info("request %s queued: %d ahead of it", request_id, queued)
        try:
            await waiter.turn.wait()  # _dispatch hands a slot over: in_flight already counts this request
        except BaseException:
            if waiter.turn.is_set():  # the slot was handed over as we were cancelled: pass it on
                self._release(client)
            else:
                self._unqueue(client, waiter)
            raise

    def _unqueue(self, client: str, waiter: _Waiter) -> None:
        queue = self._waiters[client]
        queue.remove(waiter)
        if not queue:
            del self._waiters[client]

    def _release(self, client: str) -> None:
        self._held[client] -= 1
        if not self._held[client]:
            del self._held[client]
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiting clients under their share: fewest held first, then the earliest."""
        while self.in_flight < self.max_in_flight:
            eligible = [c for c in self._waiters if self._may_take(c)]
            if not eligible:
                return
            client = min(eligible, key=lambda c: (self._held[c], self._waiters[c][0].seq))
            waiter = self._waiters[client][0]
            self._unqueue(client, waiter)
            self._take(client)
            waiter.turn.set()
