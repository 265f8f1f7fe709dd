"""Admission control: how many generating requests a node serves at once, and how many may wait.

Without a bound every request is accepted and queued inside the cluster: 256 concurrent streams once waited
up to 57 s for a first token while holding ~3.6 MB each. :class:`Admission` lets ``max_in_flight`` requests
generate, keeps up to ``max_queued`` more waiting in arrival order, and refuses the rest at once with ``429``
and ``Retry-After`` (the OpenAI SDKs honour both: they wait and retry by themselves). A queued request whose
client goes away leaves the queue (its task is cancelled).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from exo_core.api.errors import APIError

log = logging.getLogger("exo_core.api")


class Admission:
    """Slots for generating requests (see module docstring).

    Args:
        max_in_flight: requests generating at once (>= 1).
        max_queued: requests waiting for a slot (>= 0); beyond, 429.
        retry_after: seconds a refused client is told to wait (``Retry-After``).
    """

    def __init__(self, max_in_flight: int, max_queued: int, *, retry_after: int = 1) -> None:
        if max_in_flight < 1 or max_queued < 0:
            raise ValueError(f"need max_in_flight >= 1, max_queued >= 0; got {max_in_flight}, {max_queued}")
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.retry_after = retry_after
        self.in_flight = 0
        self._waiters: deque[anyio.Event] = deque()
        self.refused = 0

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, request_id: str) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``; waits in the queue when all slots are taken.

        Raises:
            APIError: 429 ``too_many_requests`` with ``Retry-After`` when the queue is full too.
        """
        if self.in_flight >= self.max_in_flight or self._waiters:
            await self._wait(request_id)
        else:
            self.in_flight += 1
        try:
            yield
        finally:
            self._release()

    async def _wait(self, request_id: str) -> None:
        if len(self._waiters) >= self.max_queued:
            self.refused += 1  # the route logs the 429
            raise APIError(
                429,
                f"the node is busy: {self.in_flight} requests generating and {len(self._waiters)} waiting; "
                f"retry in {self.retry_after} s",
                code="too_many_requests",
                headers={"Retry-After": str(self.retry_after)},
            )
        turn = anyio.Event()
        self._waiters.append(turn)
        log.info("request %s queued: %d ahead of it", request_id, len(self._waiters) - 1)
        try:
            await turn.wait()  # _release hands its slot over: in_flight already counts this request
        except BaseException:
            if turn.is_set():  # the slot was handed over as we were cancelled: pass it on
                self._release()
            else:
                self._waiters.remove(turn)
            raise

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the slot passes to the next in line; in_flight stays
        else:
            self.in_flight -= 1
