"""The ``tcp`` transport: one duplex, authenticated TCP connection per peer pair, carrying exo frames.

Usage (the node builds it from its :class:`~exo_core.components.ComponentContext`)::

    transport = TcpTransport.from_context(ctx, capabilities={"chip": "EPYC", "memory": 24576})
    transport.on(FrameType.TENSOR, handle_tensor)         # async (Incoming) -> reply | None
    transport.add_peer_listener(on_peer_event)            # PeerEvent("up" | "down", PeerInfo)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.run)                     # listening once this returns
        transport.keep("10.0.0.151", 50051)               # dial, keep connected, redial with backoff
        reply = await transport.request(peer_id, Ping(), timeout=2.0)
        await transport.send(peer_id, Token(...))         # one-way

Whichever side dialed, both use the connection: a peer that connected to us is reachable without
dialing back. Requests are matched to replies by correlation id; many share one connection. A PING is
answered by the reader itself, and large messages are fragmented, so health checks never wait behind a
tensor. When a peer's last connection closes, its pending requests fail at once with
:class:`PeerUnavailableError` and listeners get a ``down`` event.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from exo_core import __version__
from exo_core.components import ComponentContext
from exo_core.protocol.binary import Value
from exo_core.protocol.codec import Encoded, RoutedMessage, encode
from exo_core.protocol.envelope import DEFAULT_TTL, Envelope, decrement_ttl
from exo_core.protocol.errors import ProtocolError
from exo_core.protocol.header import Frame, FrameType, frame_header
from exo_core.transport.connection import Connection
from exo_core.transport.dialer import Dialer
from exo_core.transport.dispatch import Dispatcher, LinkOps
from exo_core.transport.errors import (
    ConnectionClosedError,
    PeerUnavailableError,
)
from exo_core.transport.handshake import LocalIdentity
from exo_core.transport.links import Link, PeerTable
from exo_core.transport.listener import Listener, bind
from exo_core.transport.session import Sessions
from exo_core.transport.settings import TransportSettings
from exo_core.transport.sock import format_address, is_loopback
from exo_core.transport.ssh.route import SshRoute
from exo_core.transport.types import Handler, Incoming, PeerEvent, PeerInfo, PeerListener, RelayHandler

log = logging.getLogger("exo_core.transport")


def _peer(link: Link) -> PeerInfo:
    return link.info


def _label(link: Link) -> str:
    return link.conn.label


def _send_now(link: Link, encoded: Encoded) -> None:
    try:
        link.conn.send_nowait(encoded.parts)
    except ConnectionClosedError:
        pass


class TcpTransport:
    """Listens on ``host:port``, dials peers, and carries exo messages over one connection per peer.

    Args:
        node_id: this node's id (sent in HELLO).
        host / port: where to listen (``port=0`` picks a free port; see :attr:`port`).
        cluster_key: shared secret for mutual HMAC authentication (``None``: no authentication).
        settings: limits and timeouts (defaults: :class:`TransportSettings`).
        capabilities: this node's device capabilities, sent in HELLO (settable later).
    """

    def __init__(
        self,
        node_id: str,
        *,
        host: str = "0.0.0.0",
        port: int = 50051,
        cluster_key: str | bytes | None = None,
        settings: TransportSettings | None = None,
        capabilities: dict[str, Value] | None = None,
    ) -> None:
        self.node_id = node_id
        self.host = host
        self.settings = settings or TransportSettings()
        self.capabilities: dict[str, Value] = dict(capabilities or {})
        self._requested_port = port
        self._port: int | None = None
        self._key = cluster_key.encode("utf-8") if isinstance(cluster_key, str) else cluster_key
        self._instance = secrets.randbits(63)
        self._listeners: list[PeerListener] = []
        self._table = PeerTable(node_id, self.settings.drain_timeout, self._emit)
        self._dispatcher = Dispatcher(
            node_id, LinkOps(_peer, _label, _send_now, self._reply), self._task_group, log
        )
        self._tg: TaskGroup | None = None
        #: inbound connections still in the handshake, in a budget of their own
        self._listener = Listener(self.settings, self._accept, self._task_group)
        self._sessions = Sessions(
            self.settings,
            self._identity,
            self._table,
            self._listener.release,
            self._dispatch,
            self._dispatcher.send_error,
        )
        self._dialer = Dialer(self.settings, self._sessions.serve, self._task_group, self._table)
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_context(
        cls, ctx: ComponentContext, capabilities: dict[str, Value] | None = None
    ) -> TcpTransport:
        """Build from the node's settings (``node_host``, ``node_port``, ``cluster_key``) and ours."""
        settings = ctx.settings if isinstance(ctx.settings, TransportSettings) else TransportSettings()
        key = ctx.core.cluster_key_text()
        return cls(
            ctx.node_id,
            host=ctx.core.node_host,
            port=ctx.core.node_port,
            cluster_key=key,
            settings=settings,
            capabilities=capabilities,
        )

    # ---- introspection -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`run` started)."""
        if self._port is None:
            raise RuntimeError("the transport is not listening yet: start it with `await tg.start(t.run)`")
        return self._port

    @property
    def advertised_address(self) -> str:
        """What HELLO tells peers to dial: the setting, the listen address, or ``:port`` on a wildcard."""
        if self.settings.advertise_address:
            return self.settings.advertise_address
        if self._port is None:
            return ""
        wildcard = self.host in ("", "0.0.0.0", "::")
        return f":{self._port}" if wildcard else format_address(self.host, self._port)

    @property
    def peers(self) -> dict[str, PeerInfo]:
        """Connected peers (node id -> what its HELLO said)."""
        return {pid: p.info for pid, p in self._table.peers.items()}

    def peer(self, node_id: str) -> PeerInfo | None:
        """A connected peer's HELLO info, or ``None``."""
        p = self._table.peers.get(node_id)
        return p.info if p else None

    # ---- registration --------------------------------------------------------------------------------

    def on(self, frame_type: FrameType, handler: Handler) -> None:
        """Handle messages of one type (one handler per type; PING is answered by the transport)."""
        self._dispatcher.on(frame_type, handler)

    def set_relay(self, handler: RelayHandler | None) -> None:
        """Receive messages addressed to other nodes (``envelope.dst``), to pass on with :meth:`forward`."""
        self._dispatcher.relay = handler

    def add_peer_listener(self, listener: PeerListener) -> Callable[[], None]:
        """Call ``listener`` on every peer up/down event; returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, event: PeerEvent) -> None:
        if event.kind == "down":
            self._dispatcher.peer_down(event.peer.node_id, event.reason)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("peer listener %r failed on %s", listener, event)

    # ---- running -------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``started()`` is called once the listener is bound."""
        socks = bind(self.host, self._requested_port)
        self._port = socks[0].getsockname()[1]
        where = format_address(self.host or "0.0.0.0", self._port)
        if self._key is None and not is_loopback(self.host):
            log.warning(
                "listening on %s without a cluster key: anyone who can reach this port can join the cluster; "
                "set --cluster-key / EXO_CLUSTER_KEY on every node",
                where,
            )
        log.info("transport listening on %s as node %s", where, self.node_id)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    self._loop = asyncio.get_running_loop()
                except RuntimeError:  # not asyncio
                    self._loop = None
                for s in socks:
                    tg.start_soon(self._listener.accept_loop, s)
                task_status.started()
        finally:
            self._tg = None
            for s in socks:
                s.close()

    def _task_group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the transport is not running: start it with `await tg.start(transport.run)`")
        return self._tg

    async def _accept(self, conn: Connection) -> None:
        await self._sessions.serve(conn, 0, None)

    @property
    def _connections(self) -> int:
        """Connections being served now (for tests and introspection)."""
        return len(self._sessions.open)

    @property
    def _conns(self) -> set[Connection]:
        return self._sessions.open

    def _identity(self) -> LocalIdentity:
        return LocalIdentity(
            node_id=self.node_id,
            address=self.advertised_address,
            agent=f"exo-core {__version__}",
            instance=self._instance,
            capabilities=self.capabilities,
            key=self._key,
        )

    # ---- incoming ------------------------------------------------------------------------------------

    def _dispatch(self, link: Link, frame: Frame) -> None:
        if frame.type == FrameType.GOAWAY:  # the one connection message expected after the handshake
            link.peer_goaway = True
            if link.goaway_sent:
                link.conn.fail("duplicate connection drained")
            return
        self._dispatcher.dispatch(link, frame)

    async def _reply(self, link: Link, encoded: Encoded) -> None:
        """A handler's reply: on the link the request came on, or the one that replaced it."""
        conn = link.conn if not (link.conn.closed or link.goaway_sent) else self._conn(link.info.node_id)
        await conn.send(encoded)

    # ---- outgoing ------------------------------------------------------------------------------------

    def _conn(self, peer_id: str) -> Connection:
        peer = self._table.peers.get(peer_id)
        if peer is None:
            known = ", ".join(sorted(self._table.peers)) or "none"
            raise PeerUnavailableError(f"no connection to peer {peer_id} (connected: {known})")
        return peer.primary.conn

    async def send(self, peer_id: str, msg: RoutedMessage, *, dst: str = "", ttl: int = DEFAULT_TTL) -> None:
        """Send a one-way message to a connected peer (``dst``: final recipient, if it is to be relayed).

        Returns once the message is handed to the OS. Raises :class:`PeerUnavailableError` if the peer
        is not connected, :class:`ConnectionClosedError` if the connection breaks meanwhile.
        """
        await self._conn(peer_id).send(encode(msg, Envelope(self.node_id, dst or peer_id, ttl=ttl)))

    async def request(
        self,
        peer_id: str,
        msg: RoutedMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the per-request timeout is part of the API
        dst: str = "",
        ttl: int = DEFAULT_TTL,
    ) -> RoutedMessage:
        """Send a request to a connected peer and wait for the reply with the same correlation id.

        Args:
            peer_id: the connected peer to send it to.
            msg: the request.
            timeout: seconds to wait (default ``request_timeout``).
            dst: final recipient when ``peer_id`` is to relay it ("" = ``peer_id`` itself).
            ttl: hops allowed.

        Raises:
            RequestTimeoutError: no reply in time.
            PeerUnavailableError: not connected, or the connection was lost while waiting.
            RemoteError: the peer replied with ``ERROR``.
        """
        corr, pending = self._dispatcher.open_request(peer_id)
        limit = self.settings.request_timeout if timeout is None else timeout
        try:
            encoded = encode(msg, Envelope(self.node_id, dst or peer_id, corr, wants_reply=True, ttl=ttl))
            conn = self._conn(peer_id)
            if encoded.payload_size <= self.settings.fragment_size and self._loop is not None:
                # Small request: written at once; a timer instead of a cancel scope bounds the wait.
                conn.send_nowait(encoded.parts)
                timer = self._loop.call_later(limit, pending.event.set)
                try:
                    await pending.event.wait()
                finally:
                    timer.cancel()
            else:
                with anyio.move_on_after(limit):
                    await conn.send(encoded)
                    await pending.event.wait()
        finally:
            self._dispatcher.forget_request(corr)
        return self._dispatcher.result(pending, msg.TYPE.name, dst or peer_id, limit)

    async def forward(self, peer_id: str, incoming: Incoming) -> bool:
        """Relay a received message to ``peer_id`` as is (TTL decremented in place; nothing re-encoded).

        Returns:
            ``False`` if the message's TTL is exhausted: it is dropped, with a log line and, for a request,
            an ``ERROR TTL_EXPIRED`` reply to its sender.

        Raises:
            PeerUnavailableError: ``peer_id`` is not connected.
        """
        payload = incoming.payload
        if isinstance(payload, bytes) or (isinstance(payload, memoryview) and payload.readonly):
            payload = bytearray(payload)
        try:
            decrement_ttl(payload)
        except ProtocolError as exc:
            log.warning(
                "dropping %s from %s for %s: %s",
                incoming.frame_type.name,
                incoming.envelope.src,
                incoming.envelope.dst,
                exc,
            )
            peer = self._table.peers.get(incoming.peer.node_id)
            if peer is not None and incoming.envelope.wants_reply:
                self._dispatcher.send_error(
                    peer.primary, incoming.envelope, exc.code, f"TTL expired at {self.node_id}"
                )
            return False
        conn = self._conn(peer_id)
        if len(payload) <= self.settings.fragment_size:
            conn.send_nowait([frame_header(incoming.frame_type, len(payload)), payload])
        else:
            await conn.send_large(incoming.frame_type, [payload])
        return True

    # ---- dialing (exo_core.transport.dialer) ---------------------------------------------------------

    async def dial(self, host: str, port: int, *, ssh: SshRoute | None = None) -> PeerInfo:
        """Connect to ``host:port`` (through ``ssh`` when given) once and return the peer's HELLO info (the
        connection stays up).

        Raises:
            OSError: connection refused, unreachable, or timed out (``TimeoutError``); for an SSH link,
                :class:`~exo_core.transport.ssh.SshLinkError` with ssh's one-line diagnosis.
            HandshakeError: wrong key, version mismatch, not an exo node, ...
        """
        return (await self._dialer.dial(host, port, ssh)).info

    def keep(self, host: str, port: int, *, ssh: SshRoute | None = None) -> None:
        """Keep ``host:port`` (through ``ssh`` when given) connected: dial now, redial with capped
        exponential backoff when lost.

        Idempotent. A connection that lost the duplicate rule to another connection to the same peer is
        not redialed until that peer goes down. Stop with :meth:`forget`.
        """
        self._dialer.keep(host, port, ssh)

    def forget(self, host: str, port: int, *, ssh: SshRoute | None = None) -> None:
        """Stop keeping the address connected and close the connection dialed for it."""
        self._dialer.forget(host, port, ssh)

    def peer_at(self, host: str, port: int, *, ssh: SshRoute | None = None) -> str | None:
        """The node id a kept address last led to (``None`` before it was reached, or when not kept)."""
        return self._dialer.peer_at(host, port, ssh)

    def __repr__(self) -> str:
        return f"TcpTransport(node_id={self.node_id!r}, port={self._port}, peers={len(self._table.peers)})"
