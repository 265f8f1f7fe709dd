"""The step batcher, isolated with an in-memory engine: who runs when, what gets batched, errors."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import numpy as np
import pytest

from exo_core.orchestration.batching import StepBatcher


class SlowEngine:
    """Doubles its input after a short sleep; ``forward_batch`` only when ``batching``; "bad" fails."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.running = 0
        self.most_running = 0

    async def _work(self, ids: tuple[str, ...]) -> None:
        self.calls.append(ids)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await anyio.sleep(0.05)
        finally:
            self.running -= 1
        if "bad" in ids:
            raise ValueError("bad input")

    async def forward(self, request_id: str, x: np.ndarray, *, all_logits: bool = False) -> np.ndarray:
        await self._work((request_id,))
        return np.asarray(x) * 2

    async def load(self, *args: object) -> None: ...
    async def free(self, request_id: str) -> None: ...
    def position(self, request_id: str) -> int:
        return 0

    def shard(self) -> None:
        return None

    def memory(self) -> None:
        return None


class BatchEngine(SlowEngine):
    async def forward_batch(self, steps: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        await self._work(tuple(rid for rid, _ in steps))
        return [np.asarray(x) * 2 for _, x in steps]


async def _run_all(batcher: StepBatcher, engine: SlowEngine, ids: list[str]) -> dict[str, object]:
    results: dict[str, object] = {}

    async def one(i: int, rid: str) -> None:
        await anyio.sleep(0.001 * i)  # arrive in order
        try:
            results[rid] = await batcher.forward(engine, rid, np.array([i]))  # type: ignore[arg-type]
        except Exception as exc:
            results[rid] = exc

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i, rid in enumerate(ids):
                tg.start_soon(one, i, rid)
    return results


async def test_steps_that_queue_behind_a_busy_slot_run_as_one_batch() -> None:
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1))
    results = await _run_all(batcher, engine, ["a", "b", "c", "d", "e"])
    assert engine.calls == [("a",), ("b", "c", "d", "e")]  # a lone step runs at once, alone
    assert batcher.batch_sizes == {4: 1}
    assert engine.most_running == 1
    for i, rid in enumerate("abcde"):
        np.testing.assert_array_equal(results[rid], [2 * i])


async def test_max_batch_splits_a_long_queue() -> None:
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1), max_batch=2)
    await _run_all(batcher, engine, ["a", "b", "c", "d", "e"])
    assert engine.calls == [("a",), ("b", "c"), ("d", "e")]


async def test_two_slots_run_two_passes_at_once() -> None:
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(2))
    await _run_all(batcher, engine, ["a", "b", "c", "d", "e", "f"])
    assert engine.most_running == 2
    assert sorted(x for call in engine.calls for x in call) == list("abcdef")


class OneThreadEngine(BatchEngine):
    concurrent_passes = 1


async def test_an_engine_that_runs_one_pass_at_a_time_gets_one_batch_not_two() -> None:
    """Two slots, but the engine declares one pass at a time: the queued steps wait for it and run as one
    batch instead of splitting into two passes that would queue inside the engine anyway."""
    engine, batcher = OneThreadEngine(), StepBatcher(anyio.CapacityLimiter(2))
    results = await _run_all(batcher, engine, ["a", "b", "c", "d", "e", "f"])
    assert engine.most_running == 1
    assert engine.calls == [("a",), ("b", "c", "d", "e", "f")]
    for i, rid in enumerate("abcdef"):
        np.testing.assert_array_equal(results[rid], [2 * i])


async def test_a_failed_batch_is_retried_step_by_step_and_fails_only_the_bad_step() -> None:
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1))
    results = await _run_all(batcher, engine, ["a", "b", "bad", "c"])
    assert engine.calls == [("a",), ("b", "bad", "c"), ("b",), ("bad",), ("c",)]
    assert isinstance(results["bad"], ValueError)
    for i, rid in enumerate(["a", "b", "bad", "c"]):
        if rid != "bad":
            np.testing.assert_array_equal(results[rid], [2 * i])


async def test_engines_without_forward_batch_and_prompts_run_one_at_a_time() -> None:
    engine, batcher = SlowEngine(), StepBatcher(anyio.CapacityLimiter(1))
    await _run_all(batcher, engine, ["a", "b", "c"])
    assert engine.calls == [("a",), ("b",), ("c",)] and batcher.batch_sizes == {}
    batching = BatchEngine()

    async def prompt(rid: str) -> None:
        await batcher.forward(batching, rid, np.array([1, 2, 3]))  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        for rid in ("p", "q"):
            tg.start_soon(prompt, rid)
    assert batching.calls == [("p",), ("q",)]


async def test_cancelling_the_runner_fails_its_batch_instead_of_hanging_it() -> None:
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1))
    results: dict[str, object] = {}

    async def one(rid: str, scope_box: list[anyio.CancelScope] | None = None) -> None:
        with anyio.CancelScope() as scope:
            if scope_box is not None:
                scope_box.append(scope)
            try:
                results[rid] = await batcher.forward(engine, rid, np.array([1]))  # type: ignore[arg-type]
            except Exception as exc:
                results[rid] = exc

    box: list[anyio.CancelScope] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "a")
            await anyio.sleep(0.01)
            tg.start_soon(one, "b", box)  # b will run the batch [b, c]
            await anyio.sleep(0.01)
            tg.start_soon(one, "c")
            await anyio.sleep(0.06)  # a done, b's batch running
            assert engine.calls[-1] == ("b", "c")
            box[0].cancel()
    assert "b" not in results  # cancelled
    assert isinstance(results["c"], RuntimeError) and "cancelled" in str(results["c"])


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        StepBatcher(anyio.CapacityLimiter(1), max_batch=0)
    with pytest.raises(ValueError, match="gather_window"):
        StepBatcher(anyio.CapacityLimiter(1), gather_window=-1)


async def _two_steps_apart(batcher: StepBatcher, engine: BatchEngine, gap: float) -> None:
    async def one(rid: str, delay: float) -> None:
        await anyio.sleep(delay)
        await batcher.forward(engine, rid, np.array([1]))  # type: ignore[arg-type]

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "a", 0.0)
            tg.start_soon(one, "b", gap)


async def test_a_free_slot_waits_briefly_for_the_other_active_requests() -> None:
    """Steps of two generating requests that arrive a moment apart (as a previous stage's batch does)
    still run as one batch; without the window, the first runs alone."""
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1), gather_window=0.2)
    await _two_steps_apart(batcher, engine, 0.0)  # both become known as active
    engine.calls.clear()
    await _two_steps_apart(batcher, engine, 0.02)
    assert engine.calls == [("a", "b")]
    eager, no_window = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1), gather_window=0)
    await _two_steps_apart(no_window, eager, 0.0)
    eager.calls.clear()
    await _two_steps_apart(no_window, eager, 0.02)
    assert eager.calls == [("a",), ("b",)]


async def test_a_lone_or_finished_request_never_waits() -> None:
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1), gather_window=2.0)
    await _two_steps_apart(batcher, engine, 0.0)
    batcher.forget("b")  # b finished: a is alone again
    with anyio.fail_after(1.0):  # would take the whole 2 s window if it waited for b
        await batcher.forward(engine, "a", np.array([1]))  # type: ignore[arg-type]


async def test_a_step_cancelled_while_queued_never_runs() -> None:
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1))

    async def step(rid: str) -> None:
        await batcher.forward(engine, rid, np.array([1]))  # type: ignore[arg-type]

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(step, "a")
            await anyio.sleep(0.01)  # a runs
            with anyio.CancelScope() as scope:
                scope.cancel()  # b is cancelled before a's pass ends, while it waits for the slot
                await step("b")
            tg.start_soon(step, "c")
    assert engine.calls == [("a",), ("c",)]


@pytest.mark.parametrize("comes_back", [True, False])
async def test_requests_out_of_step_merge_into_one_batch(comes_back: bool) -> None:
    """One node, 4 generating requests, one of them a pass behind: the step that gets the slot when a
    pass ends waits for that pass's one-stage requests, whose next steps arrive a moment later, so the
    passes merge (instead of alternating batches of 3 and 1 for good). Steps that go on to another node
    (not ``comes_back``) are not waited for: they return only after the rest of the ring."""
    engine, batcher = BatchEngine(), StepBatcher(anyio.CapacityLimiter(1), gather_window=0.02)

    async def generate(rid: str, delay: float) -> None:
        await anyio.sleep(delay)
        for _ in range(4):
            await batcher.forward(engine, rid, np.array([1]), comes_back=comes_back)  # type: ignore[arg-type]
            await anyio.sleep(0.002)  # sampling the token before the next step

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for rid in ("a", "b", "c"):
                tg.start_soon(generate, rid, 0.0)
            tg.start_soon(generate, "d", 0.01)  # arrives while a, b, c run
    sizes = [len(call) for call in engine.calls]
    if comes_back:  # d joins at a, b, c's second step and stays with them; its last step is alone
        assert sizes == [3, 4, 4, 4, 1], engine.calls
    else:
        assert sizes == [3, 1] * 4, engine.calls
