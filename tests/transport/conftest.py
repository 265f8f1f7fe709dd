"""Helpers for transport tests: transports on loopback with short timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from exo_core.transport.contract import Transport
from exo_core.transport.settings import TransportSettings
from exo_core.transport.tcp import TcpTransport
from exo_core.transport.types import PeerEvent

FAST = {
    "connect_timeout": 2.0,
    "handshake_timeout": 2.0,
    "request_timeout": 5.0,
    "keepalive_interval": 0.5,
    "idle_timeout": 5.0,
    "reconnect_initial": 0.05,
    "reconnect_max": 0.4,
    "drain_timeout": 2.0,
}


def make(node_id: str, *, key: str | None = None, **overrides: Any) -> TcpTransport:
    """A transport on 127.0.0.1 with an ephemeral port and test-friendly timeouts."""
    settings = TransportSettings(**{**FAST, **overrides})
    return TcpTransport(
        node_id,
        host="127.0.0.1",
        port=0,
        cluster_key=key,
        settings=settings,
        capabilities={"memory": 1024, "chip": "test"},
    )


@asynccontextmanager
async def running(*transports: Transport) -> AsyncIterator[None]:
    """Run transports (TCP or memory) in a task group for the duration of the block."""
    async with anyio.create_task_group() as tg:
        for t in transports:
            await tg.start(t.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def wait_until(cond: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds (bounded)."""
    with anyio.fail_after(within):
        while not cond():  # noqa: ASYNC110 - polls state owned by the transport
            await anyio.sleep(0.01)


class Events:
    """Collects peer events of one transport."""

    def __init__(self, transport: TcpTransport) -> None:
        self.items: list[PeerEvent] = []
        transport.add_peer_listener(self.items.append)

    def kinds(self, peer: str) -> list[str]:
        return [e.kind for e in self.items if e.peer.node_id == peer]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def accepted_sockets(port: int) -> int:
    """Connected TCP sockets of this process on local port ``port`` (Linux ``/proc``): what a node holds."""
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in list(f)[1:]:
                fields = line.split()
                listening = fields[3] == "0A"
                if not listening and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    n += 1
    return n
