"""A small pool of reusable tasks for running message handlers (no task creation per message).

Starting a task per incoming request costs more than the rest of a small request's handling on the
reading side. Instead a handler job goes to a task that finished its previous job and waits for another;
only when none waits is a new task started (in the transport's task group, so structured concurrency is
kept: every job runs in a task the group owns, errors included). Each job still has a task to itself while
it runs, so a handler may await anything (even another request) without holding up other messages.
Because tasks are reused, a handler that sets a context variable should reset it before returning.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

Job = Callable[..., Awaitable[None]]


class _Slot:
    __slots__ = ("args", "event", "job")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.job: Job | None = None
        self.args: tuple[Any, ...] = ()


class TaskPool:
    """Runs ``await job(*args)`` in pooled tasks of a task group.

    Args:
        max_idle: most tasks kept waiting for work; a task finishing a job while this many wait exits.
    """

    def __init__(self, max_idle: int = 8) -> None:
        self.max_idle = max_idle
        self._idle: list[_Slot] = []

    @property
    def idle(self) -> int:
        """Tasks waiting for a job."""
        return len(self._idle)

    def submit(self, tg: TaskGroup, job: Job, *args: Any) -> None:
        """Run ``job(*args)`` in an idle pooled task, or in a new task of ``tg``. ``job`` must not raise."""
        if self._idle:
            slot = self._idle.pop()
            slot.job, slot.args = job, args
            slot.event.set()
        else:
            tg.start_soon(self._work, job, args)

    async def _work(self, job: Job, args: tuple[Any, ...]) -> None:
        while True:
            await job(*args)
            if len(self._idle) >= self.max_idle:
                return
            slot = _Slot()
            self._idle.append(slot)
            try:
                await slot.event.wait()
            finally:
                if slot.job is None:  # cancelled while idle
                    self._idle.remove(slot)
            assert slot.job is not None
            job, args = slot.job, slot.args
