"""The life of one connection, dialed or accepted: handshake, frames until it closes, and the bookkeeping.

:class:`Sessions` runs each connection the listener accepts or the dialer opens: the handshake (where the
peer takes one of the ``max_connections`` slots, or is refused with the reason), then the read loop handing
every frame to the transport's dispatch, and the peer table kept in step (the peer goes up after the
handshake, down with its last connection). Whatever ends a connection, its socket is closed, its slot and
handshake-budget place given back, and whoever waited for the handshake's outcome is told.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import anyio

from exo_core.protocol.envelope import Envelope
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.header import Frame
from exo_core.transport.connection import Connection
from exo_core.transport.errors import ConnectionClosedError, HandshakeError
from exo_core.transport.handshake import LocalIdentity, handshake
from exo_core.transport.links import Link, PeerTable
from exo_core.transport.settings import TransportSettings
from exo_core.transport.types import PeerInfo

log = logging.getLogger("exo_core.transport")

Ready = Callable[[Link | BaseException], None]


class Sessions:
    """Runs connections (module docstring) and counts them.

    Args:
        settings: limits and timeouts (``max_connections``, ``handshake_timeout``).
        identity: what this node says in its HELLO (read at each handshake: capabilities may change).
        table: the peer table.
        handshake_over: called when a connection leaves the handshake (the listener's budget).
        dispatch: the transport's handling of one frame from a link.
        send_error: tells a link's peer what went wrong (an ``ERROR`` frame).
    """

    def __init__(
        self,
        settings: TransportSettings,
        identity: Callable[[], LocalIdentity],
        table: PeerTable,
        handshake_over: Callable[[Connection], None],
        dispatch: Callable[[Link, Frame], None],
        send_error: Callable[[Link, Envelope, ErrorCode, str], None],
    ) -> None:
        self.settings = settings
        self._identity = identity
        self._table = table
        self._handshake_over = handshake_over
        self._dispatch = dispatch
        self._send_error = send_error
        #: every connection being served now (both directions, in the handshake or not)
        self.open: set[Connection] = set()
        #: connections past the handshake (the ``max_connections`` slots)
        self.established = 0

    def _admit(self, info: PeerInfo) -> str | None:
        """Before READY: take one of the ``max_connections`` slots, or say why there is none."""
        if self.established >= self.settings.max_connections:  # logged with the handshake's failure
            return (
                f"this node has its maximum of {self.settings.max_connections} connections open "
                "(--transport-max-connections); retry later"
            )
        self.established += 1
        return None

    async def serve(self, conn: Connection, conn_seq: int, ready: Ready | None) -> None:
        """Handshake ``conn``, call ``ready`` with the link (or the failure), carry frames until it closes."""
        self.open.add(conn)
        link: Link | None = None
        slot = False  # holds one of the max_connections slots

        def admit(info: PeerInfo) -> str | None:
            nonlocal slot
            refusal = self._admit(info)
            slot = refusal is None
            return refusal

        try:
            if conn.closed:  # made room for a newer connection before it even started
                return
            async with anyio.create_task_group() as tg:
                conn.scope = tg.cancel_scope
                tg.start_soon(conn.write_loop)
                try:
                    info = await handshake(
                        conn,
                        self._identity(),
                        conn_seq=conn_seq,
                        within=self.settings.handshake_timeout,
                        admit=admit,
                    )
                except (HandshakeError, ConnectionClosedError) as exc:
                    _log_handshake_failure(conn, exc)
                    if ready is not None:
                        ready(exc)
                        ready = None
                    await conn.close_gracefully()
                    tg.cancel_scope.cancel()
                    return
                self._handshake_over(conn)
                conn.label = f"{info.node_id} ({conn.remote})"
                link = Link(conn, info)
                if not info.tool:
                    self._table.add(link)
                if ready is not None:
                    ready(link)
                    ready = None
                reason = await self._read_loop(link)
                self._table.remove(link, reason)
                tg.cancel_scope.cancel()
        finally:
            self.open.discard(conn)
            self._handshake_over(conn)
            if slot:
                self.established -= 1
            conn.closed = True
            conn.sock.close()
            if link is not None:
                self._table.remove(link, conn.error or "connection closed")
                link.done.set()
            if ready is not None:
                ready(ConnectionClosedError(f"connection to {conn.remote} closed during the handshake"))

    async def _read_loop(self, link: Link) -> str:
        conn = link.conn
        try:
            await conn.pump(functools.partial(self._dispatch, link))
        except ProtocolError as exc:
            log.warning("closing connection to %s: %s", conn.label, exc)
            self._send_error(link, Envelope(self._table.node_id), exc.code, exc.message)
            await conn.close_gracefully()
            return str(exc)
        except TimeoutError as exc:
            log.warning("closing connection to %s: %s", conn.label, exc)
            return str(exc)
        except ConnectionClosedError as exc:
            log.info("%s", exc)
            return str(exc)


def _log_handshake_failure(conn: Connection, exc: Exception) -> None:
    if isinstance(exc, HandshakeError) and exc.code == ErrorCode.SELF_CONNECTION:
        log.info("%s", exc)
    elif conn.dialed:  # the dialer's caller reports it (the keep loop logs it once, dial() raises it)
        log.debug("could not connect to %s: %s", conn.remote, exc)
    elif isinstance(exc, ConnectionClosedError) and conn.bytes_in == 0:
        # a port probe (nc -z, a load balancer's health check): no reason to warn anyone
        log.info("connection from %s closed before sending anything (a port probe?)", conn.remote)
    else:
        log.warning("rejected connection from %s: %s", conn.remote, exc)
