"""Runs one discovery module in its own process for :func:`exo_core.lan.testing.driver`.

Usage: ``python -m exo_core.lan._driver '{"factory": "package.module:Class", "kwargs": {...}}'``: the
factory is called with the keyword arguments and must return an :class:`exo_core.discovery.Discovery`.
Prints one JSON line per event: ``{"event": "started"}``, ``{"event": "found", "key", "host", "port",
"node_id", "capabilities"}``, ``{"event": "lost", "key"}``. Runs until stdin closes (a clean stop, so the
module can say goodbye) or the process is killed.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import anyio

from exo_core.discovery import DiscoveredPeer, Discovery


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class _PrintingSink:
    async def peer_found(self, peer: DiscoveredPeer) -> None:
        _emit(
            event="found",
            key=peer.key,
            host=peer.host,
            port=peer.port,
            node_id=peer.node_id,
            capabilities=peer.capabilities,
        )

    async def peer_lost(self, key: str) -> None:
        _emit(event="lost", key=key)


def build(spec: dict[str, Any]) -> Discovery:
    """Import ``spec["factory"]`` (``"module:attribute"``) and call it with ``spec["kwargs"]``."""
    module_name, sep, attribute = str(spec["factory"]).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"factory {spec['factory']!r} is not of the form 'package.module:attribute'")
    factory = getattr(importlib.import_module(module_name), attribute)
    discovery: Discovery = factory(**spec.get("kwargs", {}))
    return discovery


async def main(spec: dict[str, Any]) -> None:
    discovery = build(spec)
    async with anyio.create_task_group() as tg:
        await tg.start(discovery.run, _PrintingSink())
        _emit(event="started")
        # the test ends this process (SIGTERM or SIGKILL); stdin closing also ends it
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
