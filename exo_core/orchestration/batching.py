"""Batching the decode steps of concurrent requests: one engine pass for every step waiting its turn.

A decode step reads all of a shard's weights for one token, so it is bound by memory bandwidth. When
several requests are generating on the same shard, their steps queue for a compute slot; whoever gets the
slot takes every queued single-position step for that engine (up to :data:`MAX_BATCH`) and runs them as
one :meth:`~exo_core.engine.BatchingEngine.forward_batch`, which reads the weights once for all of them.
Nothing waits on purpose: a lone request runs alone at once, and batches form only from steps that would
otherwise have queued. Prompts (several positions) and engines without ``forward_batch`` run one
:meth:`~exo_core.engine.InferenceEngine.forward` at a time, as before.

If a batched pass raises, its steps are run again one by one, so a bad input or a full context fails only
its own request (``forward_batch`` checks every input before it changes any cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
import numpy as np

from exo_core.engine import BatchingEngine, InferenceEngine

log = logging.getLogger(__name__)

#: most steps one batched pass takes (more queued steps wait for the next pass)
MAX_BATCH = 16


@dataclass(eq=False)
class _Step:
    request_id: str
    x: np.ndarray
    done: anyio.Event = field(default_factory=anyio.Event)
    taken: bool = False
    waiting: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    result: np.ndarray | None = None
    error: BaseException | None = None


class StepBatcher:
    """Runs engine forwards under a compute limiter, batching concurrent single-position steps.

    Args:
        limiter: the node's compute slots (see :func:`exo_core.orchestration.stages.concurrent_forwards`).
        max_batch: most steps in one pass.
    """

    def __init__(self, limiter: anyio.CapacityLimiter, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._limiter = limiter
        self._max_batch = max_batch
        self._queues: dict[int, list[_Step]] = {}
        #: sizes of the batched passes run so far (for tests and logs): size -> count
        self.batch_sizes: dict[int, int] = {}

    async def forward(self, engine: InferenceEngine, request_id: str, x: np.ndarray) -> np.ndarray:
        """``engine.forward(request_id, x)``, run in a compute slot, possibly batched with other steps."""
        if len(x) != 1 or not isinstance(engine, BatchingEngine):
            async with self._limiter:
                return await engine.forward(request_id, x)
        step = _Step(request_id, x)
        queue = self._queues.setdefault(id(engine), [])
        queue.append(step)
        with step.waiting:  # cancelled when another task takes this step into its batch
            async with self._limiter:
                if not step.taken:
                    batch = queue[: self._max_batch]
                    del queue[: len(batch)]
                    if not queue:
                        self._queues.pop(id(engine), None)
                    for other in batch:
                        other.taken = True
                        if other is not step:
                            other.waiting.cancel()
                    await self._run(engine, batch)
        await step.done.wait()
        if step.error is not None:
            raise step.error
        assert step.result is not None
        return step.result

    async def _run(self, engine: BatchingEngine, batch: list[_Step]) -> None:
        """Run ``batch`` and hand every step its result or error, whatever happens."""
        try:
            if len(batch) == 1:
                batch[0].result = await engine.forward(batch[0].request_id, batch[0].x)
            else:
                self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
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
            for s in batch:
                s.done.set()

    @staticmethod
    async def _one_by_one(engine: InferenceEngine, batch: list[_Step]) -> None:
        for s in batch:
            try:
                s.result = await engine.forward(s.request_id, s.x)
            except Exception as exc:
                s.error = exc
