"""Every discovery module, inside real nodes: peers found show up on ``/v1/topology``.

Traffic stays on loopback: UDP announcements go to 127.255.255.255 on interface ``lo`` only, TCP hellos to
127.0.0.1 targets with the local-subnet scan off.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exo_core.nodeproc import NodeProcess, find_free_ports, peers_file

pytestmark = pytest.mark.timeout(180)
Start = Callable[..., NodeProcess]


def node_ids(node: NodeProcess) -> set[str]:
    return {n["id"] for n in node.get("/v1/topology")["nodes"]}


def wait_ids(node: NodeProcess, expected: set[str | None], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while node_ids(node) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"topology of {node.node_id}: {node_ids(node)} != {expected}\n{node.tail()}")
        time.sleep(0.2)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_udp_on_loopback(exo_node: Start) -> None:
    port = free_udp_port()
    args = [
        "--discovery-module",
        "udp",
        "--discovery-interfaces",
        "lo",
        "--broadcast-address",
        "127.255.255.255",
        "--udp-discovery-port",
        str(port),
        "--udp-broadcast-interval",
        "0.5",
        "--udp-peer-timeout",
        "3",
    ]
    a, b, c = exo_node(*args), exo_node(*args), exo_node(*args)
    everyone = {a.node_id, b.node_id, c.node_id}
    for node in (a, b, c):
        wait_ids(node, everyone)
    c.kill()
    wait_ids(a, {a.node_id, b.node_id})


def test_tcp_with_one_seed_each(exo_node: Start) -> None:
    ports = find_free_ports(3)

    def args(i: int, seed: int) -> list[str]:
        return [
            "--discovery-module",
            "tcp",
            "--tcp-discovery-port",
            str(ports[i]),
            "--tcp-discovery-bind-host",
            "127.0.0.1",
            "--no-tcp-scan-local-subnets",
            "--discovery-targets",
            f"127.0.0.1:{ports[seed]}",
            "--tcp-hello-interval",
            "0.5",
        ]

    a = exo_node(*args(0, 1))
    b = exo_node(*args(1, 0))
    c = exo_node(*args(2, 0))  # knows only a: gossip tells it about b
    everyone = {a.node_id, b.node_id, c.node_id}
    for node in (a, b, c):
        wait_ids(node, everyone)


def test_manual_hot_reload(exo_node: Start, tmp_path: Path) -> None:
    empty = [
        "--discovery-module",
        "manual",
        "--discovery-config-path",
        str(peers_file(tmp_path / "e.json", {})),
    ]
    b, c = exo_node(*empty), exo_node(*empty)
    path = peers_file(tmp_path / "peers.json", {})
    a = exo_node("--discovery-module", "manual", "--discovery-config-path", str(path))
    assert node_ids(a) == {a.node_id}
    peers_file(path, {"b": b.address})  # adding a peer joins it
    wait_ids(a, {a.node_id, b.node_id})
    peers_file(path, {"b": b.address, "c": c.address})
    wait_ids(a, {a.node_id, b.node_id, c.node_id})
    peers_file(path, {"c": c.address})  # removing one drops it
    wait_ids(a, {a.node_id, c.node_id})
    path.write_text(json.dumps({"peers": {"c": {"address": "no port here"}}}))  # a broken edit
    time.sleep(3)
    assert node_ids(a) == {a.node_id, c.node_id}  # the last good config stays
    assert "keeping the last good list of 1 peer(s)" in a.tail(200)
