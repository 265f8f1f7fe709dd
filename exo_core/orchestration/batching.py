"""Batching the decode steps of concurrent requests: one engine pass for every step waiting its turn.

A decode step reads all of a shard's weights for one token, so it is bound by memory bandwidth. When
several requests are generating on the same shard, their steps queue for a compute slot; whoever gets the
slot takes every queued single-position step for that engine (up to :data:`MAX_BATCH`) and runs them as
one :meth:`~exo_core.engine.BatchingEngine.forward_batch`, which reads the weights once for all of them.
A lone request never waits. When the steps of other requests generating on the same engine are due any
moment (see :meth:`StepBatcher._gather`), the step that gets the slot waits up to :data:`GATHER_WINDOW`
for them: a pass's outputs come back as one message per request, a few hundred microseconds apart.
Prompts (several positions) and engines without ``forward_batch`` run one
:meth:`~exo_core.engine.InferenceEngine.forward` at a time.

If a batched pass raises, its steps are run again one by one, so a bad input or a full context fails only
its own request (``forward_batch`` checks every input before it changes any cache).
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from dataclasses import dataclass, field

import anyio
import numpy as np

from exo_core.engine import BatchingEngine, InferenceEngine

log = logging.getLogger(__name__)

#: most steps one batched pass takes (more queued steps wait for the next pass). The NumPy engine gains
#: nothing past 8 rows (its per-row GEMVs then cost as much as reading the weights again), see docs/engines.md
MAX_BATCH = 8
#: seconds a step waits, when it could run at once, for the steps of other requests that are generating on
#: the same engine (only when there are such requests)
GATHER_WINDOW = 0.002
#: a request counts as generating on an engine while its last pass there ended at most this many seconds ago
RECENT_S = 1.0


@dataclass(eq=False)
class _Step:
    request_id: str
    x: np.ndarray
    comes_back: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    taken: bool = False
    waiting: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    result: np.ndarray | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Lane:
    """The steps waiting for one engine, and when each request's last pass on it ended."""

    queue: list[_Step] = field(default_factory=list)
    #: request id -> (number of its last pass on this engine, when that pass ended, whether its next step
    #: comes straight back here)
    passes: dict[str, tuple[int, float, bool]] = field(default_factory=dict)
    arrived: anyio.Event = field(default_factory=anyio.Event)
    count: int = 0
    #: the engine's own bound on its batched passes at once (``concurrent_passes``), or None
    own: anyio.CapacityLimiter | None = None


def _own_limiter(engine: InferenceEngine) -> anyio.CapacityLimiter | None:
    """A limiter for an engine that declares ``concurrent_passes`` (see :class:`StepBatcher`)."""
    n = getattr(engine, "concurrent_passes", None)
    return anyio.CapacityLimiter(n) if isinstance(n, int) and n >= 1 else None


class StepBatcher:
    """Runs engine forwards under a compute limiter, batching concurrent single-position steps.

    An engine may declare ``concurrent_passes`` (an int): how many of its passes can usefully run at once
    (the MLX engine runs all its work on one thread: 1). Its batched steps then also wait for one of those,
    before they take a compute slot, so steps that would have made a second pass queue behind the first
    and run as one larger batch.

    Args:
        limiter: the node's compute slots (see :func:`exo_core.orchestration.stages.concurrent_forwards`).
        max_batch: most steps in one pass.
        gather_window: seconds a step that finds a slot free waits for the steps of other requests active
            on the same engine (0: never wait). See :data:`GATHER_WINDOW`.
    """

    def __init__(
        self,
        limiter: anyio.CapacityLimiter,
        max_batch: int = MAX_BATCH,
        gather_window: float = GATHER_WINDOW,
    ) -> None:
        if max_batch < 1 or gather_window < 0:
            raise ValueError("max_batch must be >= 1 and gather_window >= 0")
        self._limiter = limiter
        self._max_batch = max_batch
        self._window = gather_window
        self._lanes: weakref.WeakKeyDictionary[InferenceEngine, _Lane] = weakref.WeakKeyDictionary()
        #: sizes of the batched passes run so far (for tests and logs): size -> count
        self.batch_sizes: dict[int, int] = {}

    def forget(self, request_id: str) -> None:
        """``request_id`` is finished: steps of other requests stop waiting for it."""
        for lane in list(self._lanes.values()):
            lane.passes.pop(request_id, None)

    async def forward(
        self, engine: InferenceEngine, request_id: str, x: np.ndarray, *, comes_back: bool = False
    ) -> np.ndarray:
        """``engine.forward(request_id, x)``, run in a compute slot, possibly batched with other steps.

        ``comes_back``: the request's next step returns to this engine right after this one (its plan has
        this one stage), so steps that get the slot just after this pass wait a moment for it.
        """
        if len(x) != 1 or not isinstance(engine, BatchingEngine):
            async with self._limiter:
                return await engine.forward(request_id, x)
        lane = self._lanes.get(engine)
        if lane is None:
            lane = self._lanes[engine] = _Lane(own=_own_limiter(engine))
        step = _Step(request_id, x, comes_back)
        lane.queue.append(step)
        lane.arrived.set()
        try:
            with step.waiting:  # cancelled when another task takes this step into its batch
                async with contextlib.AsyncExitStack() as stack:
                    if lane.own is not None:
                        await stack.enter_async_context(lane.own)
                    await stack.enter_async_context(self._limiter)
                    await self._gather(lane, step)
                    if not step.taken:
                        batch = lane.queue[: self._max_batch]
                        del lane.queue[: len(batch)]
                        for other in batch:
                            other.taken = True
                            if other is not step:
                                other.waiting.cancel()
                        await self._run(engine, lane, batch)
        except BaseException:
            if not step.taken:  # cancelled from outside while queued: nobody may run it later
                lane.queue.remove(step)
            raise
        await step.done.wait()
        if step.error is not None:
            raise step.error
        assert step.result is not None
        return step.result

    async def _gather(self, lane: _Lane, step: _Step) -> None:
        """Holding a slot, about to run: wait a moment for the steps that are about to arrive.

        Expected soon are the steps of requests that ran in the same pass as this one last time (a pass's
        outputs travel on as one message per request and come back a few hundred microseconds apart) and
        of one-stage requests whose pass here has just ended (their next steps are being sampled now).
        Without this, whoever gets the slot first runs alone and the batch splits for good (measured on
        one node, 4 requests: passes of 3 and 1 in turn). Requests elsewhere in the ring are not waited
        for (on 2 nodes that cost 2 ms per pass and settled 4 requests into passes of 3 and 1), and a lone
        request never waits.
        """
        now = time.monotonic()
        for rid, (_, ended, _) in list(lane.passes.items()):
            if now - ended > RECENT_S:
                del lane.passes[rid]
        mine = lane.passes.get(step.request_id, (-1, 0.0, False))[0]
        expected = {
            rid
            for rid, (n, ended, back) in lane.passes.items()
            if rid != step.request_id and (n == mine or (back and now - ended <= self._window))
        }
        if not self._window or not expected:
            return
        with anyio.move_on_after(self._window):
            while not step.taken and len(lane.queue) < self._max_batch:
                if expected <= {s.request_id for s in lane.queue}:
                    return
                lane.arrived = anyio.Event()
                await lane.arrived.wait()

    async def _run(self, engine: BatchingEngine, lane: _Lane, batch: list[_Step]) -> None:
        """Run ``batch`` and hand every step its result or error, whatever happens."""
        try:
            if len(batch) == 1:
                batch[0].result = await engine.forward(batch[0].request_id, batch[0].x)
            else:
                self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
                log.debug("running %d decode steps as one batch", len(batch))
                try:
                    outs = await engine.forward_batch([(s.request_id, s.x) for s in batch])
                except Exception as exc:
                    log.warning("batch of %d steps failed (%s); running them one by one", len(batch), exc)
                    await self._one_by_one(engine, batch)
                else:
                    for s, out in zip(batch, outs, strict=True):
                        s.result = out
        except Exception as exc:
            for s in batch:
                if s.result is None and s.error is None:
                    s.error = exc
        except BaseException:
            for s in batch:
                if s.result is None and s.error is None:
                    s.error = RuntimeError("the step was cancelled")
            raise
        finally:
            lane.count += 1
            ended = time.monotonic()
            for s in batch:
                lane.passes[s.request_id] = (lane.count, ended, s.comes_back)
                s.done.set()

    @staticmethod
    async def _one_by_one(engine: InferenceEngine, batch: list[_Step]) -> None:
        for s in batch:
            try:
                s.result = await engine.forward(s.request_id, s.x)
            except Exception as exc:
                s.error = exc
