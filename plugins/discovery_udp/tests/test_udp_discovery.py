"""UDP discovery among several instances on loopback (broadcast 127.255.255.255, interface ``lo``)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import pytest
from exo_discovery_udp.discovery import UdpDiscovery
from exo_discovery_udp.messages import Announce, Bye

from exo_core.errors import ConfigError
from exo_core.lan import wire
from exo_core.lan.testing import RecordingSink, driver, free_udp_port, peers_are

CAPS = {
    "model": "test box",
    "chip": "test chip",
    "memory": 2048,
    "flops": {"fp32": 1.5, "fp16": 3.0, "int8": 6},
}


def loopback_kwargs(node_id: str, node_port: int, udp_port: int, key: str | None = None) -> dict[str, Any]:
    """Only loopback: interface lo (broadcast 127.255.255.255 from its /8 netmask) and that address."""
    return {
        "node_id": node_id,
        "node_port": node_port,
        "capabilities": {**CAPS, "model": f"box {node_id}"},
        "cluster_key": key,
        "port": udp_port,
        "interfaces": ["lo"],
        "broadcast_addresses": ["127.255.255.255"],
        "interval": 0.2,
        "peer_timeout": 1.5,
    }


def make(node_id: str, node_port: int, udp_port: int, key: str | None = None) -> UdpDiscovery:
    return UdpDiscovery(**loopback_kwargs(node_id, node_port, udp_port, key))


async def test_three_nodes_find_each_other_and_notice_a_goodbye() -> None:
    port = free_udp_port()
    nodes = [make(f"n{i}", 50000 + i, port) for i in range(3)]
    sinks = [RecordingSink() for _ in nodes]
    async with anyio.create_task_group() as tg:
        scopes = []
        for node, sink in zip(nodes, sinks, strict=True):
            scope = anyio.CancelScope()
            scopes.append(scope)

            async def run(
                node: UdpDiscovery = node,
                sink: RecordingSink = sink,
                scope: anyio.CancelScope = scope,
                *,
                task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
            ) -> None:
                with scope:
                    await node.run(sink, task_status=task_status)

            await tg.start(run)
        for i, sink in enumerate(sinks):
            others = {f"n{j}" for j in range(3) if j != i}
            await sink.wait_for(peers_are(others))
        peer = sinks[0].peers["n2"]
        assert (peer.host, peer.port, peer.node_id) == ("127.0.0.1", 50002, "n2")
        assert peer.capabilities == {
            **CAPS,
            "model": "box n2",
            "flops": {"fp32": 1.5, "fp16": 3.0, "int8": 6.0},
        }
        assert "n0" not in sinks[0].peers  # its own announcements, heard back, are ignored

        scopes[2].cancel()  # a clean stop sends BYE: the others drop n2 well before the 1.5 s timeout
        with anyio.fail_after(1.0):
            await sinks[0].wait_for(lambda s: "n2" not in s.peers)
            await sinks[1].wait_for(lambda s: "n2" not in s.peers)
        assert sinks[0].events.count(("found", "n2")) == 1  # reported once, not once per announcement
        tg.cancel_scope.cancel()


async def test_a_killed_node_is_dropped_after_the_timeout() -> None:
    port = free_udp_port()
    sinks = [RecordingSink(), RecordingSink()]
    async with anyio.create_task_group() as tg:
        for i, sink in enumerate(sinks):
            await tg.start(make(f"n{i}", 50010 + i, port).run, sink)
        spec = {
            "factory": "exo_discovery_udp.discovery:UdpDiscovery",
            "kwargs": loopback_kwargs("victim", 50019, port),
        }
        async with driver(**spec) as victim:
            await victim.wait_for(lambda s: {"n0", "n1"} <= set(s.peers))
            for sink in sinks:
                await sink.wait_for(lambda s: "victim" in s.peers)
            victim.kill()  # no BYE
            with anyio.fail_after(5):
                await victim.process.wait()
            before = anyio.current_time()
            for sink in sinks:
                await sink.wait_for(lambda s: "victim" not in s.peers, within=6)
            assert anyio.current_time() - before > 0.7  # dropped by the timeout, not by a message
        tg.cancel_scope.cancel()


async def test_cluster_key_keeps_foreign_nodes_out() -> None:
    port = free_udp_port()
    a, b = RecordingSink(), RecordingSink()
    other_key, no_key = RecordingSink(), RecordingSink()
    async with anyio.create_task_group() as tg:
        await tg.start(make("a", 50020, port, key="secret-1").run, a)
        await tg.start(make("b", 50021, port, key="secret-1").run, b)
        await tg.start(make("x", 50022, port, key="secret-2").run, other_key)
        await tg.start(make("y", 50023, port, key=None).run, no_key)
        await a.wait_for(lambda s: "b" in s.peers)
        await b.wait_for(lambda s: "a" in s.peers)
        await anyio.sleep(1.0)  # five more announcement rounds from everyone
        assert set(a.peers) == {"b"} and set(b.peers) == {"a"}
        assert set(other_key.peers) == set()  # hears a, b, y: none of them is in its cluster
        assert set(no_key.peers) == set()  # an open node ignores authenticated announcements too
        tg.cancel_scope.cancel()


async def test_bad_datagrams_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    port = free_udp_port()
    key = "k"
    sink = RecordingSink()
    auth = wire.ClusterAuth.from_key(key)
    good = wire.encode(
        auth,
        wire.MessageType.ANNOUNCE,
        Announce(id="peer", port=50031, inst="00112233aabbccdd", seq=5, cap=None),
        max_body=wire.MAX_UDP_BODY,
    )
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    garbage = [b"", b"hello", b"EXOD" + bytes(40), tampered, b"\xff" * 3000]
    caplog.set_level(logging.WARNING, logger="exo_discovery_udp")
    async with anyio.create_task_group() as tg:
        await tg.start(make("me", 50030, port, key=key).run, sink)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for data in garbage:
                tx.sendto(data, ("127.0.0.1", port))
            tx.sendto(good, ("127.0.0.1", port))
            await sink.wait_for(lambda s: "peer" in s.peers, within=5)
            tx.sendto(good, ("127.0.0.1", port))  # a replay of the same sequence number changes nothing
        await anyio.sleep(0.3)
        assert sink.events == [("found", "peer")]
        assert sink.peers["peer"].capabilities is None
        tg.cancel_scope.cancel()
    text = caplog.text
    assert "bad magic" in text and "bad authentication tag" in text and "shorter than" in text


async def test_replayed_announcement_does_not_revive_a_departed_peer() -> None:
    port = free_udp_port()
    auth = wire.ClusterAuth.from_key("k")
    sink = RecordingSink()

    inst = "aa" * 8
    announce = wire.encode(
        auth, wire.MessageType.ANNOUNCE, Announce(id="p", port=50041, inst=inst, seq=1), max_body=1400
    )
    bye = wire.encode(auth, wire.MessageType.BYE, Bye(id="p", inst=inst, seq=2), max_body=1400)
    restarted = wire.encode(
        auth, wire.MessageType.ANNOUNCE, Announce(id="p", port=50041, inst="bb" * 8, seq=1), max_body=1400
    )
    async with anyio.create_task_group() as tg:
        await tg.start(make("me", 50040, port, key="k").run, sink)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(announce, ("127.0.0.1", port))
            await sink.wait_for(lambda s: "p" in s.peers, within=5)
            tx.sendto(bye, ("127.0.0.1", port))
            await sink.wait_for(lambda s: "p" not in s.peers, within=5)
            tx.sendto(announce, ("127.0.0.1", port))  # a replay: same run, old sequence number
            await anyio.sleep(0.3)
            assert "p" not in sink.peers
            tx.sendto(restarted, ("127.0.0.1", port))  # the peer restarted: a new run is accepted
            await sink.wait_for(lambda s: "p" in s.peers, within=5)
            tx.sendto(bye, ("127.0.0.1", port))  # a BYE of the old run no longer counts
            await anyio.sleep(0.3)
            assert "p" in sink.peers
        tg.cancel_scope.cancel()


async def test_unknown_interface_is_a_config_error_before_start() -> None:
    node = UdpDiscovery(
        node_id="n",
        node_port=1,
        capabilities=None,
        port=free_udp_port(),
        interfaces=["nosuch0"],
        interval=0.2,
    )
    with pytest.raises(ConfigError, match=r"--discovery-interfaces: no IPv4 interface called nosuch0"):
        await node.run(RecordingSink())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"broadcast_addresses": ["192.168.1.999"]}, "--broadcast-address: '192.168.1.999' is not an IPv4"),
        ({"interval": 2.0, "peer_timeout": 1.0}, "--udp-peer-timeout .* must be longer"),
    ],
)
def test_invalid_settings_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UdpDiscovery(node_id="n", node_port=1, capabilities=None, **kwargs)


async def test_port_in_use_by_a_non_reusing_socket_is_a_config_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        node = UdpDiscovery(
            node_id="n", node_port=1, capabilities=None, port=port, bind_host="127.0.0.1", interfaces=["lo"]
        )
        with pytest.raises(ConfigError, match=f"cannot listen on UDP 127.0.0.1:{port}"):
            await node.run(RecordingSink())


async def test_a_unicast_bind_warns_that_broadcasts_never_arrive(caplog: pytest.LogCaptureFixture) -> None:
    """``--udp-discovery-bind-host 127.0.0.1`` binds a single address: broadcasts to 127.255.255.255 do not
    reach it, so the node would silently find nobody. It says so; the default 0.0.0.0 does not warn."""
    caplog.set_level(logging.WARNING, "exo_discovery_udp")
    for bind_host, warns in (("127.0.0.1", True), ("0.0.0.0", False)):
        caplog.clear()
        disc = UdpDiscovery(**loopback_kwargs("n1", 50001, free_udp_port()), bind_host=bind_host)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(disc.run, RecordingSink())
                tg.cancel_scope.cancel()
        said = [r.getMessage() for r in caplog.records if "unicast address" in r.getMessage()]
        assert bool(said) is warns, said
        if warns:
            assert "127.0.0.1" in said[0] and "127.255.255.255" in said[0] and "0.0.0.0" in said[0]
