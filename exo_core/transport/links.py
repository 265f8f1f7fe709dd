"""The peer table: the live connections to each peer, and the rule that collapses duplicates.

Two nodes may dial each other at the same moment (both discovered the other), or one node may reach a
peer through two addresses. Both sides then apply the same deterministic rule to pick one connection:
the one dialed by the node with the smaller node id wins; between connections from the same dialer, the
higher dialer sequence number (the newer one) wins. A losing connection is drained, not cut: this side
sends ``GOAWAY`` (it will send nothing more on it) and closes once the peer's ``GOAWAY`` arrives (or after
``drain_timeout``), so no frame in flight is lost. A HELLO with a new ``instance`` for a known node id
means the peer restarted: its old connections are closed at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from exo_core.protocol.codec import encode
from exo_core.protocol.control import GoAway
from exo_core.transport.connection import Connection
from exo_core.transport.errors import ConnectionClosedError
from exo_core.transport.types import PeerEvent, PeerInfo

log = logging.getLogger("exo_core.transport")


@dataclass(eq=False)
class Link:
    """One handshaken connection and what the peer said in its HELLO."""

    conn: Connection
    info: PeerInfo
    goaway_sent: bool = False
    peer_goaway: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class Peer:
    """A connected peer: one or (briefly, while a duplicate drains) more links."""

    info: PeerInfo
    links: list[Link]
    primary: Link
    gone: anyio.Event = field(default_factory=anyio.Event)


class PeerTable:
    """Connected peers by node id, with up/down notification."""

    def __init__(self, node_id: str, drain_timeout: float, emit: Callable[[PeerEvent], None]) -> None:
        self.node_id = node_id
        self.drain_timeout = drain_timeout
        self._emit = emit
        self.peers: dict[str, Peer] = {}

    def rank(self, link: Link) -> tuple[bool, int]:
        """Higher wins: dialed by the smaller node id first, then the newer dial of the same dialer."""
        dialer = self.node_id if link.conn.dialed else link.info.node_id
        return (dialer == min(self.node_id, link.info.node_id), link.info.conn_seq)

    def add(self, link: Link) -> None:
        """Register a link whose handshake just finished; may start draining a duplicate."""
        pid = link.info.node_id
        peer = self.peers.get(pid)
        if peer is not None and peer.info.instance != link.info.instance:
            del self.peers[pid]
            for old in peer.links:
                old.conn.fail("peer restarted")
            self._down(peer, "peer restarted (new instance)")
            peer = None
        if peer is None:
            self.peers[pid] = Peer(link.info, [link], link)
            log.info(
                "peer %s up via %s (%s, protocol %d)",
                pid,
                link.conn.remote,
                "dialed" if link.conn.dialed else "accepted",
                link.info.version,
            )
            self._emit(PeerEvent("up", link.info))
            return
        peer.links.append(link)
        winner = max(peer.links, key=self.rank)
        for other in peer.links:
            if other is not winner and not other.goaway_sent:
                self.drain(other, "duplicate connection")
        peer.primary = winner
        peer.info = winner.info
        log.info(
            "duplicate connections to %s: keeping the one %s %s",
            pid,
            "dialed by" if winner.conn.dialed else "accepted from",
            winner.conn.remote,
        )

    def drain(self, link: Link, reason: str) -> None:
        """Send GOAWAY on ``link``: nothing more is sent on it; it closes when the peer agrees."""
        link.goaway_sent = True
        link.conn.close_deadline = anyio.current_time() + self.drain_timeout
        try:
            link.conn.send_nowait(encode(GoAway(reason)).parts)
        except ConnectionClosedError:
            return
        if link.peer_goaway:
            link.conn.fail(f"{reason} closed")

    def remove(self, link: Link, reason: str) -> None:
        """Forget a closed link; the peer goes down with its last link."""
        peer = self.peers.get(link.info.node_id)
        if peer is None or link not in peer.links:
            return
        peer.links.remove(link)
        if not peer.links:
            del self.peers[link.info.node_id]
            self._down(peer, reason)
        elif peer.primary is link:
            usable = [lk for lk in peer.links if not lk.goaway_sent] or peer.links
            peer.primary = max(usable, key=self.rank)
            peer.info = peer.primary.info

    def _down(self, peer: Peer, reason: str) -> None:
        log.info("peer %s down: %s", peer.info.node_id, reason)
        peer.gone.set()
        self._emit(PeerEvent("down", peer.info, reason))
