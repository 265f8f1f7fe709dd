"""Round trips to direct peers (:mod:`exo_core.orchestration.latency`) over real TCP transports."""

from __future__ import annotations

import anyio

from exo_core.orchestration.latency import PeerLatency
from exo_core.topology.cluster import ClusterView

from .conftest import make, running, wait_until


async def test_measures_each_connected_peer_and_forgets_a_lost_one() -> None:
    a, b = make("a"), make("b")
    cluster = ClusterView("a", {})
    latency = PeerLatency(cluster, a, interval=60.0, timeout=1.0, tick=0.05)
    async with running(a, b):
        await a.dial("127.0.0.1", b.port)
        await wait_until(lambda: "b" in a.peers)
        cluster.set_neighbors(["b", "gone"])  # "gone" is not connected: no figure, no error
        await latency.measure()
        assert set(latency.rtt) == {"b"}
        assert 0 < latency.rtt["b"] < 1.0
        cluster.set_neighbors([])
        await latency.measure()
        assert latency.rtt == {}
        async with anyio.create_task_group() as tg:
            await tg.start(latency.run)
            await anyio.sleep(0.3)
            cluster.set_neighbors(["b"])  # a peer that appears is measured within a tick, not an interval
            await wait_until(lambda: "b" in latency.rtt)
            tg.cancel_scope.cancel()
