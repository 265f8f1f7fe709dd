"""Runs one discovery module in its own process (for tests): prints one JSON line per event.

Usage: ``python discovery_driver.py '{"module": "udp"|"tcp", "kwargs": {...}}'``. Lines:
``{"event": "started"}``, ``{"event": "found", "key", "host", "port", "node_id", "capabilities"}``,
``{"event": "lost", "key"}``. Used by the UDP and TCP discovery tests (network namespaces, SIGKILL).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from exo_core.discovery import DiscoveredPeer


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class PrintingSink:
    async def peer_found(self, peer: DiscoveredPeer) -> None:
        emit(
            event="found",
            key=peer.key,
            host=peer.host,
            port=peer.port,
            node_id=peer.node_id,
            capabilities=peer.capabilities,
        )

    async def peer_lost(self, key: str) -> None:
        emit(event="lost", key=key)


def build(spec: dict[str, Any]) -> Any:
    if spec["module"] == "udp":
        from exo_discovery_udp.discovery import UdpDiscovery

        return UdpDiscovery(**spec["kwargs"])
    from exo_discovery_tcp.discovery import TcpDiscovery

    return TcpDiscovery(**spec["kwargs"])


async def main(spec: dict[str, Any]) -> None:
    discovery = build(spec)
    async with anyio.create_task_group() as tg:
        await tg.start(discovery.run, PrintingSink())
        emit(event="started")
        # the test ends this process (SIGTERM or SIGKILL); stdin closing also ends it
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
