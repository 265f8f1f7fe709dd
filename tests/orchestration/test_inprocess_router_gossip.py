"""Gossip and the router over memory transports: topology spreading along a line, routing and relaying."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from exo_core.orchestration.gossip import Gossip
from exo_core.orchestration.router import NoRouteError, Router
from exo_core.protocol import Finish, FrameType
from exo_core.protocol.codec import RoutedMessage
from exo_core.protocol.inference import Topology
from exo_core.testing import MemoryNetwork, MemoryTransport
from exo_core.topology.cluster import ClusterView
from exo_core.transport.types import Incoming


@dataclass
class Member:
    """The parts of a node under test: transport, cluster view, gossip, router, and what reached it."""

    transport: MemoryTransport
    cluster: ClusterView
    gossip: Gossip
    router: Router | None = None
    got: list[tuple[str, RoutedMessage]] = field(default_factory=list)
    #: one entry per call of the gossip's ``on_change`` hook
    changes: list[None] = field(default_factory=list)

    async def deliver(self, msg: RoutedMessage, sender: str) -> None:
        if isinstance(msg, Topology):
            self.gossip.on_topology(msg, sender)
        else:
            self.got.append((sender, msg))

    async def incoming(self, incoming: Incoming) -> RoutedMessage | None:
        await self.deliver(incoming.message, incoming.envelope.src or incoming.peer.node_id)
        return None


def _member(net: MemoryNetwork, node_id: str, *, max_age: float = 30.0) -> Member:
    transport = net.transport(node_id)
    view = ClusterView(node_id, {"memory": 1024})
    changes: list[None] = []
    gossip = Gossip(view, transport, interval=0.05, max_age=max_age, on_change=lambda: changes.append(None))
    return Member(transport, view, gossip, changes=changes)


@asynccontextmanager
async def members(net: MemoryNetwork, *ids: str, max_age: float = 30.0) -> AsyncIterator[dict[str, Member]]:
    """Members wired as a node wires them, running until the block ends."""
    out = {i: _member(net, i, max_age=max_age) for i in ids}
    async with anyio.create_task_group() as tg:
        for m in out.values():
            m.router = Router(m.transport, m.cluster, tg, m.deliver)
            for ftype in (FrameType.FINISH, FrameType.TOPOLOGY):
                m.transport.on(ftype, m.incoming)
            m.transport.set_relay(m.router.relay)
            m.transport.add_peer_listener(m.gossip.on_peer_event)
        for m in out.values():
            await tg.start(m.transport.run)
            m.cluster.set_address(m.transport.advertised_address)
            await tg.start(m.gossip.run)
        try:
            yield out
        finally:
            tg.cancel_scope.cancel()


async def converge(ms: dict[str, Member], reachable: set[str], within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while any(m.cluster.reachable() != reachable for m in ms.values()):  # noqa: ASYNC110 - gossip rounds
            await anyio.sleep(0.01)


async def test_gossip_spreads_every_record_along_a_line() -> None:
    net = MemoryNetwork()
    net.line("a", "b", "c")
    async with members(net, "a", "b", "c") as ms:
        await converge(ms, {"a", "b", "c"})
        a = ms["a"].cluster
        assert a.edges() == {frozenset("ab"), frozenset("bc")}
        assert a.records["c"].address == "memory:3" and a.records["c"].capabilities == {"memory": 1024}
        assert a.next_hop("c") == "b" and ms["c"].cluster.next_hop("a") == "b"
        assert ms["a"].changes  # the node's on_change hook ran


async def test_gossip_tells_the_far_end_when_a_link_is_cut_and_prunes_the_lost_node() -> None:
    net = MemoryNetwork()
    net.line("a", "b", "c")
    async with members(net, "a", "b", "c", max_age=0.3) as ms:
        await converge(ms, {"a", "b", "c"})
        net.cut("b", "c")
        with anyio.fail_after(5):
            while ms["a"].cluster.reachable() != {"a", "b"}:  # noqa: ASYNC110 - gossip rounds
                await anyio.sleep(0.01)
            assert ms["a"].cluster.next_hop("c") is None
            while "c" in ms["a"].cluster.records:  # noqa: ASYNC110 - forgotten after max_age
                await anyio.sleep(0.02)
        net.link("b", "c")  # back: the records come back too
        await converge(ms, {"a", "b", "c"})


async def test_the_router_delivers_locally_directly_and_through_relays() -> None:
    net = MemoryNetwork()
    net.line("a", "b", "c")
    async with members(net, "a", "b", "c") as ms:
        await converge(ms, {"a", "b", "c"})
        a = ms["a"].router
        assert a is not None
        await a.send("a", Finish("local", "stop"))
        await a.send("b", Finish("direct", "stop"))
        await a.send("c", Finish("relayed", "stop"))
        with anyio.fail_after(5):
            while not (ms["a"].got and ms["b"].got and ms["c"].got):  # noqa: ASYNC110 - delivered in tasks
                await anyio.sleep(0.01)
        assert ms["a"].got == [("a", Finish("local", "stop"))]
        assert ms["b"].got == [("a", Finish("direct", "stop"))]  # b relayed the third, kept only its own
        assert ms["c"].got == [("a", Finish("relayed", "stop"))]  # the original sender, not the relay


async def test_the_router_refuses_nodes_no_path_leads_to(caplog: pytest.LogCaptureFixture) -> None:
    net = MemoryNetwork()
    net.line("a", "b", "c")
    async with members(net, "a", "b", "c") as ms:
        await converge(ms, {"a", "b", "c"})
        a, b = ms["a"].router, ms["b"].router
        assert a is not None and b is not None
        with pytest.raises(NoRouteError, match="no route to node z"):
            await a.send("z", Finish("r", "stop"))
        # b is asked to relay to a node it cannot reach: it logs and drops (a relay never raises)
        net.cut("b", "c")
        with anyio.fail_after(5):
            while "c" in ms["b"].transport.peers:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        with caplog.at_level(logging.WARNING, "exo_core.orchestration.router"):
            await ms["a"].transport.send("b", Finish("lost", "stop"), dst="c")
            with anyio.fail_after(5):
                while not any("cannot relay" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        assert ms["c"].got == []
