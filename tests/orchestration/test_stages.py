"""The stage runner with an in-memory shard host and engine: a step that outlives its request."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np

from exo_core.orchestration.catalog import Catalog
from exo_core.orchestration.stages import StageRunner
from exo_core.protocol.codec import RoutedMessage
from exo_core.protocol.inference import Finish, Prompt, RequestContext, SamplingParams, Stage


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


async def test_a_request_finished_during_its_step_sends_nothing_and_keeps_no_cache(tmp_path: Path) -> None:
    engine = Engine()
    sent: list[tuple[str, RoutedMessage]] = []

    async def send(node: str, msg: RoutedMessage) -> None:
        sent.append((node, msg))

    runner = StageRunner("a", Shards(engine), Catalog("m", None), send)  # type: ignore[arg-type]
    ctx = RequestContext("r1", "a", "m", (Stage("a", 0, 0), Stage("b", 1, 1)), SamplingParams())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.on_prompt, Prompt(ctx, (1, 2, 3)))
            await anyio.sleep(0.01)  # the prompt is in its forward
            await runner.on_finish(Finish("r1", "cancelled"))
            engine.release.set()
    assert sent == [] and engine.caches == {}
