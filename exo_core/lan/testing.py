"""Test helpers for discovery modules: a recording sink, a module running in a child process, and throwaway
network namespaces joined by a bridge (the only non-loopback network the tests ever touch).

Used by the ``manual``, ``udp`` and ``tcp`` discovery tests, and open to third-party discovery modules::

    from exo_core.lan.testing import RecordingSink, driver, peers_are

    async def test_two_nodes_find_each_other() -> None:
        sink = RecordingSink()
        ...  # run your module with ``await tg.start(module.run, sink)``
        await sink.wait_for(peers_are({"node-b"}), within=10)

        # or in a child process that a test may SIGKILL:
        async with driver("exo_discovery_udp.discovery:UdpDiscovery", {"node_id": "a", ...}) as child:
            await child.wait_for(peers_are({"node-b"}))

Nothing here is a pytest plugin or needs pytest; importing it starts nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Self

import anyio
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from exo_core.discovery import DiscoveredPeer

__all__ = [
    "DriverProcess",
    "NetnsNode",
    "RecordingSink",
    "driver",
    "free_udp_port",
    "netns_lan",
    "netns_unavailable",
    "peers_are",
]


class RecordingSink:
    """A discovery sink that keeps the current peers and every event, and can wait for a condition."""

    def __init__(self) -> None:
        self.peers: dict[str, DiscoveredPeer] = {}
        self.events: list[tuple[str, str]] = []
        self._changed = anyio.Event()

    async def peer_found(self, peer: DiscoveredPeer) -> None:
        self.peers[peer.key] = peer
        self.events.append(("found", peer.key))
        self._notify()

    async def peer_lost(self, key: str) -> None:
        self.peers.pop(key, None)
        self.events.append(("lost", key))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[Self], bool], within: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds; fail the test after ``within`` seconds."""
        with anyio.move_on_after(within):
            while not predicate(self):
                await self._changed.wait()
            return
        raise AssertionError(f"timed out after {within} s; peers={sorted(self.peers)} events={self.events}")


def peers_are(expected: set[str]) -> Callable[[RecordingSink], bool]:
    """A ``wait_for`` predicate: the sink's current peers are exactly ``expected``."""
    return lambda sink: set(sink.peers) == expected


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DriverProcess(RecordingSink):
    """A discovery module running in a child process (see :func:`driver`), seen through its events.

    Attributes:
        process: the child process.
        started: the module called ``task_status.started()``.
        exited: the child's stdout closed (it exited or is about to).
    """

    def __init__(self, process: Process) -> None:
        super().__init__()
        self.process = process
        self.started = False
        self.exited = False

    async def pump(self) -> None:
        """Read the child's event lines into this sink until its stdout closes."""
        assert self.process.stdout is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stdout):
            buffer += chunk
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                event = json.loads(line)
                if event["event"] == "started":
                    self.started = True
                    self._notify()
                elif event["event"] == "found":
                    await self.peer_found(
                        DiscoveredPeer(
                            key=event["key"],
                            host=event["host"],
                            port=event["port"],
                            node_id=event["node_id"],
                            capabilities=event["capabilities"],
                        )
                    )
                else:
                    await self.peer_lost(event["key"])
        self.exited = True
        self._notify()

    def kill(self) -> None:
        """SIGKILL: the module gets no chance to say goodbye."""
        self.process.kill()


@asynccontextmanager
async def driver(
    factory: str, kwargs: dict[str, Any], *, netns: str | None = None
) -> AsyncIterator[DriverProcess]:
    """Run a discovery module in a child process (inside network namespace ``netns`` if given) and wait,
    at most 20 s, until it started.

    Args:
        factory: ``"package.module:attribute"``, called with ``kwargs`` in the child; it must return an
            :class:`exo_core.discovery.Discovery` (e.g. ``"exo_discovery_udp.discovery:UdpDiscovery"``).
        kwargs: JSON-serialisable keyword arguments for the factory.
        netns: a network namespace name (``ip netns exec``), e.g. from :func:`netns_lan`.

    On exit, stdin is closed (a clean stop: the module says goodbye) and the child gets 5 s to end
    before it is killed. :meth:`DriverProcess.kill` ends it without a goodbye.
    """
    spec = json.dumps({"factory": factory, "kwargs": kwargs})
    cmd = [sys.executable, "-m", "exo_core.lan._driver", spec]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    process = await anyio.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
    proc = DriverProcess(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(proc.pump)
            await proc.wait_for(lambda p: p.started or p.exited, within=20)
            if not proc.started:
                with anyio.move_on_after(5):
                    await process.wait()
                raise AssertionError(f"discovery process exited early with code {process.returncode}")
            yield proc
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()  # a clean stop: the module says goodbye
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(5):
                    await process.wait()


# ----- network namespaces -----


@dataclass(frozen=True)
class NetnsNode:
    """One network namespace with one veth interface on the shared bridge."""

    netns: str
    interface: str
    address: str  # without prefix


def netns_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or ``None``."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"exoprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


@contextmanager
def netns_lan(addresses: list[str]) -> Iterator[list[NetnsNode]]:
    """A throwaway LAN: a "switch" namespace with a bridge, and one namespace per address (CIDR form,
    e.g. ``10.77.1.1/20``) whose ``eth0`` is a veth plugged into the bridge. Everything is created inside
    new namespaces (never in the host's) and deleted on exit."""
    tag = secrets.token_hex(3)
    switch = f"exo{tag}sw"
    created: list[str] = []
    nodes: list[NetnsNode] = []
    try:
        _ip("netns", "add", switch)
        created.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, cidr in enumerate(addresses):
            name = f"exo{tag}n{i}"
            _ip("netns", "add", name)
            created.append(name)
            _ip(
                "link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", f"p{i}", "netns", switch
            )
            _ip("-n", switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", name, "addr", "add", cidr, "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            nodes.append(NetnsNode(name, "eth0", cidr.split("/")[0]))
        yield nodes
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
