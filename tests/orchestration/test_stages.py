"""The stage runner with an in-memory shard host and engine: a step that outlives its request."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import numpy as np
import pytest

from exo_core.orchestration import stages
from exo_core.orchestration.stages import StageRunner
from exo_core.params import SamplingParams
from exo_core.protocol.codec import RoutedMessage
from exo_core.protocol.inference import (
    Finish,
    Progress,
    Prompt,
    RequestContext,
    Sampling,
    Stage,
    TensorMessage,
    Token,
)
from exo_core.protocol.tensor import Tensor


class Engine:
    def __init__(self) -> None:
        self.caches: dict[str, int] = {}
        self.release = anyio.Event()

    async def forward(self, request_id: str, x: np.ndarray, *, all_logits: bool = False) -> np.ndarray:
        await self.release.wait()
        self.caches[request_id] = self.caches.get(request_id, 0) + len(x)
        return np.zeros((len(x), 8), np.float32)

    def position(self, request_id: str) -> int:
        return self.caches.get(request_id, 0)


class Shards:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def engine_for(self, key: object, request_id: str) -> Engine:
        return self.engine

    async def free(self, request_id: str) -> None:
        self.engine.caches.pop(request_id, None)


CTX = RequestContext("r1", "a", "m", (Stage("a", 0, 0), Stage("b", 1, 1)), Sampling())


def _runner(shards: Shards) -> tuple[StageRunner, list[tuple[str, RoutedMessage]]]:
    """A stage runner of node ``a`` over ``shards``, and the list of what it sends."""
    sent: list[tuple[str, RoutedMessage]] = []

    async def send(node: str, msg: RoutedMessage) -> None:
        sent.append((node, msg))

    return StageRunner("a", shards, send), sent  # type: ignore[arg-type]


async def test_a_request_finished_during_its_step_sends_nothing_and_keeps_no_cache(tmp_path: Path) -> None:
    engine = Engine()
    runner, sent = _runner(Shards(engine))
    ctx = CTX
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.on_prompt, Prompt(ctx, (1, 2, 3)))
            await anyio.sleep(0.01)  # the prompt is in its forward
            await runner.on_finish(Finish("r1", "cancelled"))
            engine.release.set()
    assert sent == [] and engine.caches == {}


async def test_a_step_arriving_after_finish_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A stop string seen at the origin finishes the request while its next token travels to the first
    stage: that token must not start a fresh cache (and fail on its position) nor log an error."""
    engine = Engine()
    engine.release.set()
    runner, sent = _runner(Shards(engine))
    ctx = CTX
    with anyio.fail_after(5):
        await runner.on_prompt(Prompt(ctx, (1, 2, 3)))
        assert engine.caches == {"r1": 3} and len(sent) == 1  # hidden states went on to b
        await runner.on_finish(Finish("r1", "stop"))
        with caplog.at_level(logging.DEBUG, "exo_core.orchestration.stages"):
            await runner.on_token(Token(ctx, 0, 3, 42))
            # a late hidden state for a node's later stage (the ring b -> a of another plan of r1)
            later = RequestContext("r1", "b", "m", (Stage("b", 0, 0), Stage("a", 1, 1)), Sampling())
            await runner.on_tensor(TensorMessage(later, 0, 3, Tensor.from_numpy(np.zeros(8, np.float32))))
    assert engine.caches == {} and len(sent) == 1  # no step ran, no ERROR went to the origin
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("late step of finished request r1" in r.getMessage() for r in caplog.records)


async def test_a_finish_during_the_shard_lookup_drops_the_step(caplog: pytest.LogCaptureFixture) -> None:
    """The stop-string race on one node: the next token's step is looking up its shard when the FINISH
    frees the cache; it must end quietly instead of failing on the freed cache's position."""
    engine = Engine()
    engine.release.set()
    lookup = anyio.Event()
    proceed = anyio.Event()

    class SlowShards(Shards):
        async def engine_for(self, key: object, request_id: str) -> Engine:
            if request_id == "r1" and engine.caches.get("r1"):  # the decode step, not the prompt
                lookup.set()
                await proceed.wait()
            return self.engine

    runner, sent = _runner(SlowShards(engine))
    ctx = CTX
    with anyio.fail_after(5), caplog.at_level(logging.DEBUG, "exo_core.orchestration.stages"):
        await runner.on_prompt(Prompt(ctx, (1, 2, 3)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.on_token, Token(ctx, 0, 3, 42))
            await lookup.wait()
            await runner.on_finish(Finish("r1", "stop"))
            proceed.set()
    assert engine.caches == {} and len(sent) == 1  # only the prompt's hidden states; no ERROR
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class ChunkEngine(Engine):
    """Records the size of every forward call; each call waits for its own go."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.go = anyio.Event()

    async def forward(self, request_id: str, x: np.ndarray, *, all_logits: bool = False) -> np.ndarray:
        self.calls.append(len(x))
        await self.go.wait()
        self.go = anyio.Event()
        start = self.caches.get(request_id, 0)
        self.caches[request_id] = start + len(x)
        return np.arange(start, start + len(x), dtype=np.float32)[:, None] * np.ones((1, 8), np.float32)


def _chunk_runner(engine: ChunkEngine) -> tuple[StageRunner, list[tuple[str, RoutedMessage]]]:
    sent: list[tuple[str, RoutedMessage]] = []

    async def send(node: str, msg: RoutedMessage) -> None:
        sent.append((node, msg))

    runner = StageRunner("a", Shards(engine), send, prefill_chunk=4)  # type: ignore[arg-type]
    return runner, sent


async def test_a_long_prompt_runs_in_chunks_and_goes_on_as_one_tensor() -> None:
    engine = ChunkEngine()
    runner, sent = _chunk_runner(engine)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.on_prompt, Prompt(CTX, tuple(range(10))))
            while not any(isinstance(m, TensorMessage) for _, m in sent):
                await anyio.sleep(0.005)
                engine.go.set()
    assert engine.calls == [4, 4, 2]
    *progress, (node, msg) = sent
    # after each chunk the origin (a) hears how far the prompt got
    assert progress == [("a", Progress("r1", d, 10)) for d in (4, 8, 10)]
    assert node == "b" and isinstance(msg, TensorMessage)
    rows = msg.tensor.to_numpy()
    assert rows.shape == (10, 8) and list(rows[:, 0]) == list(range(10))  # every position, in order


async def test_a_request_finished_during_its_prefill_stops_at_the_next_chunk() -> None:
    engine = ChunkEngine()
    runner, sent = _chunk_runner(engine)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.on_prompt, Prompt(CTX, tuple(range(10))))
            await anyio.sleep(0.05)  # the first chunk is in its forward
            assert engine.calls == [4]
            await runner.on_finish(Finish("r1", "cancelled"))  # the client went away mid-prefill
            engine.go.set()
    assert engine.calls == [4]  # the chunk under way ends; no later chunk starts
    assert sent == [("a", Progress("r1", 4, 10))]  # its progress, and nothing goes on
    assert engine.caches == {} and runner.in_flight() == 0


@pytest.mark.parametrize("logprobs", [False, True])
async def test_logprobs_are_computed_only_for_requests_that_ask(
    monkeypatch: pytest.MonkeyPatch, logprobs: bool
) -> None:
    """The last stage spends a softmax over the vocabulary per token on a logprob only when the request
    asked for it (the wire's logprobs flag); otherwise the TOKEN carries NaN."""
    calls: list[int] = []
    real = stages.token_logprob

    def spy(logits: np.ndarray, token_id: int) -> float:
        calls.append(token_id)
        return real(logits, token_id)

    monkeypatch.setattr(stages, "token_logprob", spy)
    engine = Engine()
    engine.release.set()
    runner, sent = _runner(Shards(engine))
    params = SamplingParams(temperature=0.0, logprobs=logprobs)
    ctx = RequestContext("r1", "o", "m", (Stage("a", 0, 0),), Sampling(params, max_tokens=1))
    with anyio.fail_after(5):
        await runner.on_prompt(Prompt(ctx, (1, 2, 3)))
    (token,) = [m for _, m in sent if isinstance(m, Token)]
    assert token.finished and token.token_id == 0
    if logprobs:
        assert calls == [0] and np.isfinite(token.logprob) and token.logprob < 0  # uniform logits
    else:
        assert calls == [] and np.isnan(token.logprob)
