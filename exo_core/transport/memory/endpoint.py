"""A memory transport's messaging: handlers, sending, request matching, relaying, as TcpTransport does it.

Frames that arrive on a link go through the real :class:`~exo_core.protocol.frame.FrameParser` and
:func:`~exo_core.protocol.codec.decode`; what a node sends is encoded by
:func:`~exo_core.protocol.codec.encode`.
Dispatch mirrors :class:`~exo_core.transport.tcp.TcpTransport`: messages for another node go to the relay
handler, replies to the request waiting for them, ``PING`` is answered here, everything else to the
handler of its type in a pooled task; bad input becomes an ``ERROR`` (and a bad frame drops the link).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from exo_core.protocol.codec import CONNECTION_TYPES, RoutedMessage, decode, encode
from exo_core.protocol.control import Error, Ping, Pong
from exo_core.protocol.envelope import DEFAULT_TTL, Envelope, decrement_ttl
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.frame import Frame, FrameParser, FrameType, frame_header
from exo_core.transport.errors import PeerUnavailableError, RemoteError, RequestTimeoutError
from exo_core.transport.memory.links import End, Pending
from exo_core.transport.types import Handler, Incoming, PeerEvent, PeerInfo, PeerListener, RelayHandler
from exo_core.transport.workers import TaskPool

log = logging.getLogger("exo_core.transport.memory")

_CORR_MAX = 0xFFFFFFFF


class Endpoint:
    """Sends and receives over the links of one node (the :class:`MemoryTransport` adds running and linking).

    Args:
        node_id: this node.
        request_timeout: default seconds a request waits for its reply.
        max_frame_size: largest frame accepted from a link.
    """

    def __init__(self, node_id: str, *, request_timeout: float, max_frame_size: int) -> None:
        self.node_id = node_id
        self.request_timeout = request_timeout
        self.max_frame_size = max_frame_size
        self._corr = itertools.count(1)
        self._handlers: dict[FrameType, Handler] = {}
        self._relay: RelayHandler | None = None
        self._listeners: list[PeerListener] = []
        self._ends: dict[str, End] = {}
        self._pending: dict[int, Pending] = {}
        self._tg: TaskGroup | None = None
        self._pool = TaskPool()

    # ---- contract: peers and handlers ----------------------------------------------------------------

    @property
    def peers(self) -> dict[str, PeerInfo]:
        return {pid: end.info for pid, end in self._ends.items()}

    def peer(self, node_id: str) -> PeerInfo | None:
        end = self._ends.get(node_id)
        return end.info if end else None

    def add_peer_listener(self, listener: PeerListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on(self, frame_type: FrameType, handler: Handler) -> None:
        if frame_type in CONNECTION_TYPES or frame_type in (FrameType.FRAGMENT, FrameType.PING):
            raise ValueError(f"{frame_type.name} is handled by the transport itself")
        if frame_type in self._handlers:
            raise ValueError(f"a handler for {frame_type.name} is already registered")
        self._handlers[frame_type] = handler

    def set_relay(self, handler: RelayHandler | None) -> None:
        self._relay = handler

    # ---- contract: sending ---------------------------------------------------------------------------

    def _end(self, peer_id: str) -> End:
        end = self._ends.get(peer_id)
        if end is None:
            known = ", ".join(sorted(self._ends)) or "none"
            raise PeerUnavailableError(f"no connection to peer {peer_id} (connected: {known})")
        return end

    async def send(self, peer_id: str, msg: RoutedMessage, *, dst: str = "", ttl: int = DEFAULT_TTL) -> None:
        await anyio.lowlevel.checkpoint()
        encoded = encode(msg, Envelope(self.node_id, dst or peer_id, ttl=ttl))
        self._end(peer_id).outbound.put(encoded.tobytes())

    async def request(
        self,
        peer_id: str,
        msg: RoutedMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the per-request timeout is part of the API
        dst: str = "",
        ttl: int = DEFAULT_TTL,
    ) -> RoutedMessage:
        corr = next(self._corr) % _CORR_MAX + 1
        pending = Pending(peer_id)
        self._pending[corr] = pending
        limit = self.request_timeout if timeout is None else timeout
        try:
            encoded = encode(msg, Envelope(self.node_id, dst or peer_id, corr, wants_reply=True, ttl=ttl))
            self._end(peer_id).outbound.put(encoded.tobytes())
            with anyio.move_on_after(limit):
                await pending.event.wait()
        finally:
            del self._pending[corr]
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        if reply is None:
            raise RequestTimeoutError(f"no reply from {dst or peer_id} to {msg.TYPE.name} within {limit:g}s")
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message, dst or peer_id)
        return reply

    async def forward(self, peer_id: str, incoming: Incoming) -> bool:
        payload = bytearray(incoming.payload)  # a copy, as TCP's own buffer: the TTL is patched in place
        try:
            decrement_ttl(payload)
        except ProtocolError as exc:
            env = incoming.envelope
            log.warning("dropping %s from %s for %s: %s", incoming.frame_type.name, env.src, env.dst, exc)
            back = self._ends.get(incoming.peer.node_id)
            if back is not None and env.wants_reply:
                self._send_error(back, env, exc.code, f"TTL expired at {self.node_id}")
            return False
        end = self._end(peer_id)
        await anyio.lowlevel.checkpoint()
        end.outbound.put(frame_header(incoming.frame_type, len(payload)) + payload)
        return True

    # ---- peer events ---------------------------------------------------------------------------------

    def _emit(self, event: PeerEvent) -> None:
        if event.kind == "down":
            err = PeerUnavailableError(f"connection to peer {event.peer.node_id} lost: {event.reason}")
            for p in self._pending.values():
                if p.via == event.peer.node_id and p.reply is None:
                    p.error = err
                    p.event.set()
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("peer listener %r failed on %s", listener, event)

    # ---- incoming ------------------------------------------------------------------------------------

    async def _pump(self, end: End) -> None:
        """Deliver the frames of one link's inbound direction, in order."""
        parser = FrameParser(self.max_frame_size)
        with end.scope:
            while True:
                data = await end.inbound.get()
                try:
                    for frame in parser.feed(data):
                        self._dispatch(end, frame)
                except ProtocolError as exc:
                    log.warning("closing the memory link to %s: %s", end.info.node_id, exc)
                    self._send_error(end, Envelope(self.node_id), exc.code, exc.message)
                    end.drop(str(exc))
                    return

    def _dispatch(self, end: End, frame: Frame) -> None:
        ftype, peer = frame.type, end.info.node_id
        if ftype in CONNECTION_TYPES:
            raise ProtocolError(ErrorCode.UNEXPECTED, f"{ftype.name} after the handshake")
        try:
            env, msg = decode(ftype, frame.payload)
        except ProtocolError as exc:
            log.warning("malformed %s from %s: %s", ftype.name, peer, exc)
            self._send_error(end, Envelope(self.node_id), exc.code, f"malformed {ftype.name}: {exc.message}")
            return
        assert env is not None
        incoming = Incoming(end.info, env, msg, ftype, frame.payload)  # type: ignore[arg-type]
        if env.dst and env.dst != self.node_id:
            if self._relay is None:
                log.warning("%s sent a %s for %s; no route", peer, ftype.name, env.dst)
                if env.wants_reply:
                    self._send_error(end, env, ErrorCode.NO_ROUTE, f"no route to {env.dst}")
                return
            self._pool.submit(self._group(), self._run_relay, self._relay, incoming)
            return
        if env.reply:
            pending = self._pending.get(env.corr)
            if pending is not None and pending.via == peer and pending.reply is None:
                pending.reply = msg  # type: ignore[assignment]
                pending.event.set()
            else:
                log.debug("dropping late or unknown reply %d from %s", env.corr, peer)
            return
        if ftype == FrameType.PING:
            assert isinstance(msg, Ping)
            if env.wants_reply:
                pong = encode(Pong(msg.nonce), Envelope(self.node_id, env.src, env.corr, reply=True))
                end.outbound.put(pong.tobytes())
            return
        handler = self._handlers.get(ftype)
        if handler is None:
            if ftype == FrameType.ERROR:
                assert isinstance(msg, Error)
                log.warning("%s reported %s: %s", peer, msg.code_name, msg.message)
            elif ftype != FrameType.PONG:
                log.warning("no handler for %s from %s", ftype.name, peer)
            if env.wants_reply:
                self._send_error(end, env, ErrorCode.NO_HANDLER, f"this node does not handle {ftype.name}")
            return
        self._pool.submit(self._group(), self._run_handler, handler, end, incoming)

    def _group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the transport is not running")
        return self._tg

    async def _run_relay(self, relay: RelayHandler, incoming: Incoming) -> None:
        try:
            await relay(incoming)
        except Exception:
            log.exception("relay of %s for %s failed", incoming.frame_type.name, incoming.envelope.dst)

    async def _run_handler(self, handler: Handler, end: End, incoming: Incoming) -> None:
        env = incoming.envelope
        try:
            result = await handler(incoming)
        except Exception as exc:
            log.exception("handler for %s from %s failed", incoming.frame_type.name, end.info.node_id)
            if env.wants_reply:
                self._send_error(end, env, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        if not env.wants_reply:
            return
        if result is None:
            self._send_error(end, env, ErrorCode.INTERNAL, f"no reply to {incoming.frame_type.name}")
            return
        try:  # the link it came on, or the one that replaced it
            out = end if self._ends.get(end.info.node_id) is end else self._end(end.info.node_id)
        except PeerUnavailableError as exc:
            log.warning("could not reply to %s: %s", end.info.node_id, exc)
            return
        out.outbound.put(encode(result, Envelope(self.node_id, env.src, env.corr, reply=True)).tobytes())

    def _send_error(self, end: End, env: Envelope, code: ErrorCode, message: str) -> None:
        reply = env.wants_reply and not env.reply
        out = Envelope(self.node_id, env.src if reply else "", env.corr if reply else 0, reply=reply)
        end.outbound.put(encode(Error(code, message), out).tobytes())
