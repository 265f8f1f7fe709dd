"""TCP discovery between nodes in separate network namespaces joined by a bridge, found by scanning
the local subnet (no target configured). Needs root (``ip netns``); skipped otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from exo_core.lan.testing import NetnsNode, driver, netns_lan, netns_unavailable, peers_are

_REASON = netns_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture
def lan() -> Iterator[list[NetnsNode]]:
    # a /27: the subnet scan tries 29 other addresses, most of which do not answer
    with netns_lan(["10.78.0.5/27", "10.78.0.17/27", "10.78.0.30/27"]) as nodes:
        yield nodes


def tcp_spec(i: int, node: NetnsNode, key: str | None = "lan-key") -> dict[str, Any]:
    return {
        "factory": "exo_discovery_tcp.discovery:TcpDiscovery",
        "kwargs": {
            "node_id": f"ns{i}",
            "node_port": 50051,
            "capabilities": None,
            "cluster_key": key,
            "port": 5678,
            "interfaces": [node.interface],
            "scan_local_subnets": True,
            "hello_interval": 0.3,
            "scan_interval": 1.0,
            "peer_timeout": 2.0,
            "connect_timeout": 0.3,
            "concurrency": 16,
        },
    }


@pytest.mark.timeout(90)
async def test_tcp_subnet_scan_in_namespaces_and_a_departure(lan: list[NetnsNode]) -> None:
    async with (
        driver(**tcp_spec(0, lan[0]), netns=lan[0].netns) as n0,
        driver(**tcp_spec(1, lan[1]), netns=lan[1].netns) as n1,
        driver(**tcp_spec(2, lan[2]), netns=lan[2].netns) as n2,
    ):
        for i, proc in enumerate((n0, n1, n2)):
            others = {f"ns{j}" for j in range(3) if j != i}
            await proc.wait_for(peers_are(others), within=20)
        assert n1.peers["ns0"].host == "10.78.0.5"
        n2.kill()
        with anyio.fail_after(5):
            await n2.process.wait()
        await n0.wait_for(lambda s: "ns2" not in s.peers, within=8)
        await n1.wait_for(lambda s: "ns2" not in s.peers, within=8)
