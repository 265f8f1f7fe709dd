"""Admission of inbound connections: a small budget for connections still in the handshake.

A connection that has not finished the handshake has proved nothing (not even that it speaks exo), so it
must not take the slots of authenticated peers (``max_connections``) nor be able to lock legitimate
clients out. Connections in the handshake get their own budget (``max_handshakes``, at most
``max_handshakes_per_address`` of it per source address), and each is bounded by the handshake timeout.
When the budget is full a new connection is still admitted: the oldest waiting connection gives way, so
idle sockets opened earlier (an attacker's) are closed rather than the new dial refused, which matters
when attacker and legitimate client share an address (a NAT, a tunnel, loopback). Among the waiting
connections of the address that must give way, those that have sent nothing go first.
"""

from __future__ import annotations

from collections import Counter

from exo_core.transport.connection import Connection


class HandshakeBudget:
    """Inbound connections in the handshake, oldest first, counted per source address.

    Args:
        total: most connections in the handshake at once.
        per_address: most of them from one source address.
    """

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._waiting: dict[Connection, str] = {}  # insertion order is age order
        self._per_host: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._waiting)

    def count(self, host: str) -> int:
        """Connections in the handshake from ``host``."""
        return self._per_host[host]

    def admit(self, conn: Connection, host: str) -> Connection | None:
        """Count ``conn`` (from ``host``) in; return the connection that must give way for it, if any.

        The returned connection is no longer counted; the caller closes it.
        """
        victim: Connection | None = None
        if self._per_host[host] >= self.per_address:
            victim = self._oldest({host})
        elif len(self._waiting) >= self.total:
            most = max(self._per_host.values())
            victim = self._oldest({h for h, n in self._per_host.items() if n == most})
        if victim is not None:
            self.release(victim)
        self._waiting[conn] = host
        self._per_host[host] += 1
        return victim

    def release(self, conn: Connection) -> None:
        """``conn`` finished (or failed) its handshake: it no longer counts. Idempotent."""
        host = self._waiting.pop(conn, None)
        if host is None:
            return
        self._per_host[host] -= 1
        if not self._per_host[host]:
            del self._per_host[host]

    def _oldest(self, hosts: set[str]) -> Connection | None:
        first: Connection | None = None
        for conn, host in self._waiting.items():
            if host in hosts:
                if conn.bytes_in == 0:
                    return conn  # an idle socket before any handshake in progress
                if first is None:
                    first = conn
        return first
