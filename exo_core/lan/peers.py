"""A table of live peers that reports changes to a sink and forgets peers not heard from in time.

Shared by the ``udp`` and ``tcp`` discovery modules; independent of how peers are heard from. Named apart from
the transport's table of connected peers: this one only holds addresses that discovery suggests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from exo_core.discovery import DiscoveredPeer, DiscoverySink

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    peer: DiscoveredPeer
    last_seen: float


class LanPeerTable:
    """Live peers by key; reports each new or changed peer once and each departure once.

    Args:
        sink: where changes are reported.
        timeout: seconds after the last sighting at which a peer counts as gone.
        max_peers: bound on the table; sightings of new peers beyond it are dropped with a warning.
        clock: monotonic clock (tests may pass their own).
    """

    def __init__(
        self,
        sink: DiscoverySink,
        *,
        timeout: float,
        max_peers: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._timeout = timeout
        self._max_peers = max_peers
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def peers(self) -> list[DiscoveredPeer]:
        """The live peers, most recently seen first."""
        entries = sorted(self._entries.values(), key=lambda e: e.last_seen, reverse=True)
        return [e.peer for e in entries]

    def get(self, key: str) -> DiscoveredPeer | None:
        entry = self._entries.get(key)
        return entry.peer if entry else None

    async def seen(self, peer: DiscoveredPeer) -> None:
        """Record a sighting; reports ``peer_found`` when the peer is new or its address or capabilities
        changed."""
        entry = self._entries.get(peer.key)
        now = self._clock()
        if entry is not None:
            entry.last_seen = now
            if entry.peer == peer and entry.peer.capabilities == peer.capabilities:
                return
            entry.peer = peer
            log.info("peer %s changed: %s", peer.key, peer.address)
        else:
            if len(self._entries) >= self._max_peers:
                log.warning(
                    "ignoring peer %s at %s: already %d peers", peer.key, peer.address, self._max_peers
                )
                return
            self._entries[peer.key] = _Entry(peer, now)
            log.info("peer %s found at %s", peer.key, peer.address)
        await self._sink.peer_found(peer)

    async def remove(self, key: str, reason: str) -> None:
        """Forget a peer now (it said goodbye) and report ``peer_lost``."""
        if self._entries.pop(key, None) is not None:
            log.info("peer %s lost: %s", key, reason)
            await self._sink.peer_lost(key)

    async def expire(self) -> None:
        """Report and forget every peer not seen within the timeout."""
        deadline = self._clock() - self._timeout
        for key in [k for k, e in self._entries.items() if e.last_seen < deadline]:
            await self.remove(key, f"not heard from in {self._timeout:g} s")
