"""Real nodes in one process: ``Node`` objects over memory transports, the NumPy engine on a tiny model.

Everything of a node runs (router, gossip, backend, stage runner, shard host, engine) but sockets and the API:
a line of three nodes whose ends reach each other only through the middle one, a node vanishing while a
request streams, several requests at once. Every greedy output is compared with one node's output.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from anyio.abc import TaskStatus

from exo_core.api.backend import BackendError, Finished, Progress, SamplingParams, Started, TokenEvent
from exo_core.orchestration.node import Node
from exo_core.settings import CoreSettings
from exo_core.testing import MemoryNetwork
from exo_core.topology.partition import RingMemoryWeighted
from exo_core.transport.types import Incoming

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
PROMPTS = ["the cat", "hello there", "in the beginning", "one two three"]
#: greedy, long enough to vanish a node half-way, and never the end-of-sequence token (id 2): every request
#: yields exactly ``max_tokens`` tokens whatever the random tiny model prefers
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, logit_bias=((2, -100.0),))


def _tiny() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tiny_llama", REFERENCE_DIR / "tiny_llama.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2-style model (4 layers, tied embeddings) as a Hugging Face folder."""
    folder: Path = _tiny().write("qwen2", tmp_path_factory.mktemp("inprocess") / "tiny-qwen2")
    return folder


@dataclass
class Cluster:
    """Nodes on one memory network, each in its own cancel scope (so it can die alone)."""

    net: MemoryNetwork
    nodes: dict[str, Node]
    scopes: dict[str, anyio.CancelScope] = field(default_factory=dict)

    def kill(self, node_id: str) -> None:
        """The node's process dies: its links drop at once and everything it runs stops."""
        self.net.vanish(node_id)
        self.scopes[node_id].cancel()

    async def settle(self, n: int, within: float = 10.0) -> None:
        """Wait until every live node sees ``n`` reachable nodes and the same connections."""
        live = [node for nid, node in self.nodes.items() if not self.scopes[nid].cancel_called]
        with anyio.fail_after(within):
            for node in live:
                await node.wait_for_nodes(n)
            while len({node.cluster.edges() for node in live}) > 1:  # noqa: ASYNC110 - gossip converges
                await anyio.sleep(0.02)


async def _run_in_scope(node: Node, scope: anyio.CancelScope, *, task_status: TaskStatus[None]) -> None:
    with scope:
        await node.run(api=False, task_status=task_status)


@asynccontextmanager
async def cluster(
    model: Path, tmp_path: Path, ids: list[str], link: Callable[[MemoryNetwork], None]
) -> AsyncIterator[Cluster]:
    net = MemoryNetwork()
    nodes = {}
    for node_id in ids:
        core = CoreSettings(
            model_path=model,
            config_dir=tmp_path / node_id,
            request_timeout=20.0,
            token_timeout=10.0,
            failover_retries=2,
            compute_slots=1,
        )
        nodes[node_id] = Node(
            core,
            node_id=node_id,
            transport=net.transport(node_id),
            discovery=None,
            partitioner=RingMemoryWeighted(),
            engine_factory=_numpy_engine,
            engine_name="numpy",
            capabilities={"memory": 1024, "chip": "test"},
            gossip_interval=0.1,
        )
    link(net)
    c = Cluster(net, nodes)
    async with anyio.create_task_group() as tg:
        for node_id, node in nodes.items():
            c.scopes[node_id] = anyio.CancelScope()
            await tg.start(functools.partial(_run_in_scope, node, c.scopes[node_id]))
        await c.settle(len(ids))
        try:
            yield c
        finally:
            tg.cancel_scope.cancel()


def _numpy_engine() -> object:
    from exo_engine_numpy.engine import NumpyEngine

    return NumpyEngine(weights="float32")


async def generate(
    node: Node, prompt: str, params: SamplingParams = GREEDY, on_token: Callable[[int], None] | None = None
) -> list[int]:
    """The token ids ``node``'s backend streams for ``prompt`` (checking the stream's shape)."""
    tokens: list[int] = []
    events = node.backend.generate(
        model=node.catalog.default_model,
        messages=None,
        prompt=prompt,
        params=params,
        request_id=f"r-{prompt}",
    )
    finished = None
    async for event in events:
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            if on_token is not None:
                on_token(len(tokens))
        elif isinstance(event, Finished):
            finished = event.reason
        else:
            assert isinstance(event, Started | Progress)
    assert finished == "length"
    return tokens


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int]]:
    """Each prompt's greedy tokens on a single node."""

    async def main() -> dict[str, list[int]]:
        tmp = tmp_path_factory.mktemp("single")
        async with cluster(tiny_model, tmp, ["solo"], lambda net: None) as c:
            return {p: await generate(c.nodes["solo"], p) for p in PROMPTS}

    out: dict[str, list[int]] = anyio.run(main)
    return out


async def test_a_three_node_line_relays_and_matches_one_node(
    tiny_model: Path, tmp_path: Path, reference: dict[str, list[int]]
) -> None:
    async with cluster(tiny_model, tmp_path, ["a", "b", "c"], lambda net: net.line("a", "b", "c")) as c:
        a, b = c.nodes["a"], c.nodes["b"]
        assert not c.net.linked("a", "c") and a.cluster.next_hop("c") == "b"
        relayed: list[str] = []
        forward = b.transport.forward

        async def counting(peer_id: str, incoming: Incoming) -> bool:
            relayed.append(f"{incoming.envelope.src}->{incoming.envelope.dst}:{incoming.frame_type.name}")
            return await forward(peer_id, incoming)

        b.transport.forward = counting  # type: ignore[method-assign]
        with anyio.fail_after(60):
            tokens = await generate(a, PROMPTS[0])
        plan = a.backend.topology()["plan"]["shards"]
        assert [s["node_id"] for s in plan] == ["a", "b", "c"], plan
        assert tokens == reference[PROMPTS[0]]
        # c's tokens reach a (the origin and first stage) only through b
        assert "c->a:TOKEN" in relayed
        # and a request whose API node is the other end of the line works the same
        with anyio.fail_after(60):
            assert await generate(c.nodes["c"], PROMPTS[1]) == reference[PROMPTS[1]]


async def test_a_node_vanishing_mid_request_fails_over_and_the_stream_goes_on(
    tiny_model: Path, tmp_path: Path, reference: dict[str, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(tiny_model, tmp_path, ["a", "b", "c"], lambda net: net.mesh("a", "b", "c")) as c:
        a = c.nodes["a"]

        def kill_c_after_four(n: int) -> None:
            if n == 4:
                c.kill("c")

        with anyio.fail_after(60), caplog.at_level(logging.WARNING, "exo_core.orchestration.failover"):
            tokens = await generate(a, PROMPTS[2], on_token=kill_c_after_four)
        assert tokens == reference[PROMPTS[2]]  # no token lost, repeated or changed by the replay
        events = list(a.backend.recent_events)
        assert [e["event"] for e in events] == ["failover"] and events[0]["lost_nodes"] == ["c"]
        plan = a.backend.topology()["plan"]["shards"]
        assert {s["node_id"] for s in plan} == {"a", "b"}
        assert any("moving it to plan" in r.getMessage() for r in caplog.records)


async def test_a_request_fails_fast_when_failover_is_off(tiny_model: Path, tmp_path: Path) -> None:
    async with cluster(tiny_model, tmp_path, ["a", "b"], lambda net: net.link("a", "b")) as c:
        a = c.nodes["a"]
        a.backend.failover_retries = 0
        with anyio.fail_after(30), pytest.raises(BackendError) as err:
            await generate(a, PROMPTS[0], on_token=lambda n: c.kill("b") if n == 2 else None)
        assert err.value.status == 503 and err.value.code == "node_lost"
        assert "node b" in err.value.message and a.backend.recent_events[-1]["event"] == "failover_gave_up"


async def test_a_draining_node_hands_its_part_of_a_streaming_request_over(
    tiny_model: Path, tmp_path: Path, reference: dict[str, list[int]]
) -> None:
    async with cluster(tiny_model, tmp_path, ["a", "b", "c"], lambda net: net.mesh("a", "b", "c")) as c:
        a, leaving = c.nodes["a"], c.nodes["b"]
        third = anyio.Event()
        tokens: list[int] = []

        async def stream() -> None:
            tokens.extend(await generate(a, PROMPTS[3], on_token=lambda n: third.set() if n == 3 else None))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream)
                await third.wait()
                await leaving.drain(10.0)  # returns once no stage of any request runs on b
                assert leaving.stages.in_flight() == 0
        assert tokens == reference[PROMPTS[3]]
        assert [e["event"] for e in a.backend.recent_events] == ["failover"]
        assert {s["node_id"] for s in a.backend.topology()["plan"]["shards"]} == {"a", "c"}


async def test_concurrent_requests_on_a_line_each_match_one_node(
    tiny_model: Path, tmp_path: Path, reference: dict[str, list[int]]
) -> None:
    results: dict[str, list[int]] = {}
    async with cluster(tiny_model, tmp_path, ["a", "b", "c"], lambda net: net.line("a", "b", "c")) as c:

        async def one(node: Node, prompt: str) -> None:
            results[prompt] = await generate(node, prompt)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for i, prompt in enumerate(PROMPTS):  # API nodes at both ends and in the middle
                    tg.start_soon(one, c.nodes["abca"[i]], prompt)
        for node in c.nodes.values():
            assert len(node.tracker) == 0  # every request ended everywhere
    assert results == reference


async def test_max_tokens_beyond_the_context_is_a_400_naming_it(tiny_model: Path, tmp_path: Path) -> None:
    """OpenAI answers 400 when prompt + max_tokens exceed the context; it is not silently clipped."""
    async with cluster(tiny_model, tmp_path, ["solo"], lambda net: None) as c:
        node = c.nodes["solo"]
        with anyio.fail_after(30), pytest.raises(BackendError) as refused:
            await generate(node, "the cat", SamplingParams(max_tokens=1000, temperature=0.0))
        assert refused.value.status == 400 and refused.value.param == "max_tokens"
        assert "at most" in refused.value.message and "(got 1000)" in refused.value.message
        # one token over the room is refused; the room itself is accepted
        loaded = await node.catalog.load(node.catalog.default_model)
        room = loaded.config.context_length - len(loaded.tokenizer.encode("the cat"))
        for max_tokens, refused_expected in ((room + 1, True), (room, False)):
            events = node.backend.generate(
                model=node.catalog.default_model,
                messages=None,
                prompt="the cat",
                params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
                request_id=f"room-{max_tokens}",
            )
            if refused_expected:
                with pytest.raises(BackendError):
                    await anext(events)
            else:
                assert isinstance(await anext(events), Started)
                await events.aclose()  # type: ignore[attr-defined]
