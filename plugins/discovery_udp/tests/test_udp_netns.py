"""UDP and TCP discovery between nodes in separate network namespaces joined by a bridge.

The LAN is 10.77.0.0/20 with nodes in three different /24s (10.77.1.1, 10.77.2.1, 10.77.3.1): the
nodes only hear each other if the broadcast address comes from the real /20 netmask (10.77.15.255),
not from a /24 guess. Needs root (``ip netns``); skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from exo_core.lan.testing import NetnsNode, driver, netns_lan, netns_unavailable, peers_are

_REASON = netns_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

CAPS = {"model": "ns box", "chip": "ns chip", "memory": 512, "flops": {"fp32": 0.5, "fp16": 1.0, "int8": 2.0}}


@pytest.fixture
def lan() -> Iterator[list[NetnsNode]]:
    with netns_lan(["10.77.1.1/20", "10.77.2.1/20", "10.77.3.1/20"]) as nodes:
        yield nodes


def udp_spec(i: int, node: NetnsNode) -> dict[str, Any]:
    return {
        "factory": "exo_discovery_udp.discovery:UdpDiscovery",
        "kwargs": {
            "node_id": f"ns{i}",
            "node_port": 50051,
            "capabilities": CAPS,
            "port": 5678,
            "interfaces": [node.interface],  # broadcast from its real netmask; no extra address
            "interval": 0.2,
            "peer_timeout": 1.5,
        },
    }


@pytest.mark.timeout(90)
async def test_udp_in_namespaces_uses_the_real_netmask_and_notices_a_departure(lan: list[NetnsNode]) -> None:
    async with (
        driver(**udp_spec(0, lan[0]), netns=lan[0].netns) as n0,
        driver(**udp_spec(1, lan[1]), netns=lan[1].netns) as n1,
        driver(**udp_spec(2, lan[2]), netns=lan[2].netns) as n2,
    ):
        procs = [n0, n1, n2]
        for i, proc in enumerate(procs):
            others = {f"ns{j}" for j in range(3) if j != i}
            await proc.wait_for(peers_are(others), within=15)
        assert n0.peers["ns2"].host == "10.77.3.1" and n0.peers["ns2"].port == 50051
        assert n0.peers["ns2"].capabilities == CAPS
        n2.kill()
        with anyio.fail_after(5):
            await n2.process.wait()
        await n0.wait_for(lambda s: "ns2" not in s.peers, within=6)
        await n1.wait_for(lambda s: "ns2" not in s.peers, within=6)
