"""TCP discovery on loopback addresses 127.0.0.x: seeds, gossip, departures, cluster keys, bad input."""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import pytest
from exo_discovery_tcp.discovery import TcpDiscovery

from exo_core.errors import ConfigError
from exo_core.lan.testing import RecordingSink, driver, peers_are
from exo_core.testing import find_free_ports

CAPS = {"model": "box", "chip": "chip", "memory": 1024, "flops": {"fp32": 1.0, "fp16": 2.0, "int8": 4.0}}


def loopback_kwargs(
    node_id: str, host: str, port: int, targets: list[str], key: str | None = None
) -> dict[str, Any]:
    """Only loopback: bound to ``host`` (also the source of its hellos), explicit targets, no subnet scan."""
    return {
        "node_id": node_id,
        "node_port": 50100 + int(host.rsplit(".", 1)[1]),
        "capabilities": {**CAPS, "model": f"box {node_id}"},
        "cluster_key": key,
        "port": port,
        "bind_host": host,
        "targets": targets,
        "scan_local_subnets": False,
        "hello_interval": 0.2,
        "scan_interval": 0.5,
        "peer_timeout": 1.5,
        "connect_timeout": 0.5,
    }


def make(node_id: str, host: str, port: int, targets: list[str], key: str | None = None) -> TcpDiscovery:
    return TcpDiscovery(**loopback_kwargs(node_id, host, port, targets, key))


async def start(tg: anyio.abc.TaskGroup, node: TcpDiscovery, sink: RecordingSink) -> anyio.CancelScope:
    scope = anyio.CancelScope()

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with scope:
            await node.run(sink, task_status=task_status)

    await tg.start(run)
    return scope


async def test_one_seed_each_finds_the_whole_cluster_by_gossip_and_a_departure() -> None:
    port = find_free_ports(1)[0]
    hosts = {"a": "127.0.0.11", "b": "127.0.0.12", "c": "127.0.0.13", "d": "127.0.0.14"}
    seeds = {"a": [], "b": [hosts["a"]], "c": [hosts["b"]], "d": [f"{hosts['c']}:{port}"]}  # a chain
    sinks = {name: RecordingSink() for name in hosts}
    async with anyio.create_task_group() as tg:
        scopes = {
            name: await start(tg, make(name, hosts[name], port, seeds[name]), sinks[name]) for name in hosts
        }
        for name, sink in sinks.items():
            others = set(hosts) - {name}
            await sink.wait_for(peers_are(others), within=10)
        peer = sinks["d"].peers["a"]  # d only knew c: it learned a through gossip
        assert (peer.host, peer.port, peer.node_id) == ("127.0.0.11", 50111, "a")
        assert peer.capabilities == {**CAPS, "model": "box a"}

        scopes["b"].cancel()  # b leaves (no goodbye in TCP discovery): dropped after the 1.5 s timeout
        for name in ("a", "c", "d"):
            await sinks[name].wait_for(lambda s: "b" not in s.peers, within=6)
        await anyio.sleep(0.5)
        for name in ("a", "c", "d"):  # the others stay, and b is not re-learned from stale gossip
            assert set(sinks[name].peers) == {"a", "c", "d"} - {name}
        assert sinks["a"].events.count(("found", "c")) == 1
        tg.cancel_scope.cancel()


async def test_a_killed_process_is_dropped() -> None:
    port = find_free_ports(1)[0]
    a, b = RecordingSink(), RecordingSink()
    async with anyio.create_task_group() as tg:
        await start(tg, make("a", "127.0.0.21", port, []), a)
        await start(tg, make("b", "127.0.0.22", port, ["127.0.0.21"]), b)
        spec = {
            "factory": "exo_discovery_tcp.discovery:TcpDiscovery",
            "kwargs": loopback_kwargs("victim", "127.0.0.23", port, ["127.0.0.22"]),
        }
        async with driver(**spec) as victim:
            await victim.wait_for(lambda s: set(s.peers) == {"a", "b"}, within=10)
            await a.wait_for(lambda s: "victim" in s.peers)
            victim.kill()
            with anyio.fail_after(5):
                await victim.process.wait()
            await a.wait_for(lambda s: "victim" not in s.peers, within=6)
            await b.wait_for(lambda s: "victim" not in s.peers, within=6)
        tg.cancel_scope.cancel()


async def test_cidr_target_scan_finds_every_node() -> None:
    port = find_free_ports(1)[0]
    sinks = [RecordingSink() for _ in range(3)]
    async with anyio.create_task_group() as tg:
        await start(tg, make("n1", "127.0.0.41", port, []), sinks[0])
        await start(tg, make("n2", "127.0.0.42", port, []), sinks[1])
        await start(tg, make("scanner", "127.0.0.43", port, ["127.0.0.40/29"]), sinks[2])  # .41 - .46
        await sinks[2].wait_for(lambda s: set(s.peers) == {"n1", "n2"})
        await sinks[0].wait_for(lambda s: set(s.peers) == {"scanner", "n2"})  # n2 learned by gossip
        tg.cancel_scope.cancel()


async def test_cluster_key_mismatch_keeps_foreign_nodes_out() -> None:
    port = find_free_ports(1)[0]
    a, b, x, y = RecordingSink(), RecordingSink(), RecordingSink(), RecordingSink()
    async with anyio.create_task_group() as tg:
        await start(tg, make("a", "127.0.0.51", port, [], key="k1"), a)
        await start(tg, make("b", "127.0.0.52", port, ["127.0.0.51"], key="k1"), b)
        await start(tg, make("x", "127.0.0.53", port, ["127.0.0.51", "127.0.0.52"], key="k2"), x)
        await start(tg, make("y", "127.0.0.54", port, ["127.0.0.51", "127.0.0.53"], key=None), y)
        await a.wait_for(lambda s: "b" in s.peers)
        await b.wait_for(lambda s: "a" in s.peers)
        await anyio.sleep(1.0)  # several hello rounds from everyone
        assert set(a.peers) == {"b"} and set(b.peers) == {"a"}
        assert set(x.peers) == set() and set(y.peers) == set()
        tg.cancel_scope.cancel()


async def test_bad_and_silent_clients_are_logged_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="exo_discovery_tcp")
    port = find_free_ports(1)[0]
    a, b = RecordingSink(), RecordingSink()
    async with anyio.create_task_group() as tg:
        await start(tg, make("a", "127.0.0.61", port, []), a)
        for junk in (
            b"GET / HTTP/1.1\r\n\r\n" + bytes(20),
            b"EXOD\x01\x03\x00" + bytes(8) + b"\xff\xff",
            b"",
        ):
            async with await anyio.connect_tcp("127.0.0.61", port) as conn:
                if junk:
                    await conn.send(
                        junk
                    )  # else: a silent client, closed after the 2 x 0.5 s exchange timeout
                with anyio.fail_after(3):
                    with pytest.raises(anyio.EndOfStream):  # closed by a, with nothing sent back
                        await conn.receive()
        await start(tg, make("b", "127.0.0.62", port, ["127.0.0.61"]), b)
        await a.wait_for(lambda s: "b" in s.peers)  # still serving
        tg.cancel_scope.cancel()
    assert "bad magic" in caplog.text
    assert "body length 65535 is over the 32768-byte limit" in caplog.text
    assert "timed out (slow or silent client)" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": ["10.0.0.0/16"]}, r"--discovery-targets: '10.0.0.0/16' has 65534 hosts, more than"),
        ({"targets": ["10.0.0.0/33"]}, r"--discovery-targets: '10.0.0.0/33' is not a CIDR range"),
        ({"targets": ["host:99999"]}, r"--discovery-targets: 'host:99999': '99999' is not a port"),
        ({"targets": ["[::1"]}, r"missing '\]'"),
        ({"hello_interval": 5, "peer_timeout": 5}, r"--tcp-peer-timeout \(5 s\) must be longer"),
    ],
)
def test_invalid_settings_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TcpDiscovery(node_id="n", node_port=1, capabilities=None, **kwargs)


async def test_port_in_use_is_a_config_error() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        node = TcpDiscovery(
            node_id="n",
            node_port=1,
            capabilities=None,
            port=port,
            bind_host="127.0.0.1",
            scan_local_subnets=False,
        )
        with pytest.raises(ConfigError, match=f"cannot listen on TCP 127.0.0.1:{port}"):
            await node.run(RecordingSink())
