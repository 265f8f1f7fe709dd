"""What a transport does with each message that arrives, whatever carried it (shared by every transport).

:class:`Dispatcher` decodes a frame from a peer's link and routes it: a message addressed to another node
goes to the relay handler, a reply to the request waiting for it (matched by correlation id and by the
peer it was sent to), a ``PING`` is answered at once, anything else to the handler registered for its
type, run in a pooled task, whose result (or failure) becomes the reply. Bad input becomes an ``ERROR``
to its sender and a log line; nothing here blocks the reader.

A transport plugs in its links through four small functions: who the peer of a link is, how it is named
in logs, how to queue a small frame on it at once, and how to send a reply (on that link, or on the one
that replaced it). It keeps what is its own: reading frames, connection-level messages (``GOAWAY``), and
deciding when a peer is down (:meth:`Dispatcher.peer_down` then fails the requests waiting on it).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from exo_core.protocol.codec import CONNECTION_TYPES, Encoded, RoutedMessage, decode, encode
from exo_core.protocol.control import Error, Ping, Pong
from exo_core.protocol.envelope import Envelope
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.header import Frame, FrameType
from exo_core.transport.errors import PeerUnavailableError, RemoteError, RequestTimeoutError
from exo_core.transport.types import Handler, Incoming, PeerInfo, RelayHandler
from exo_core.transport.workers import TaskPool

L = TypeVar("L")  # a transport's link type
_CORR_MAX = 0xFFFFFFFF


@dataclass(eq=False)
class Pending:
    """A request waiting for its reply from the peer ``via``."""

    via: str
    event: anyio.Event = field(default_factory=anyio.Event)
    reply: RoutedMessage | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class LinkOps(Generic[L]):
    """How the dispatcher uses a transport's links.

    Attributes:
        peer: the peer at the other end of a link (its HELLO).
        label: how a link is named in log lines.
        send_now: queue a small frame on the link at once (dropped silently if the link just closed).
        reply: send a handler's reply (on the link, or the one that replaced it); raises
            ``ConnectionClosedError`` / :class:`PeerUnavailableError` when there is none.
    """

    peer: Callable[[L], PeerInfo]
    label: Callable[[L], str]
    send_now: Callable[[L, Encoded], None]
    reply: Callable[[L, Encoded], Awaitable[None]]


class Dispatcher(Generic[L]):
    """Handlers, the relay, pending requests, and the routing of arriving messages (module docstring).

    Args:
        node_id: this node.
        ops: how to use the transport's links.
        task_group: the transport's running task group (raises when it is not running).
        log: the transport's logger.
    """

    def __init__(
        self, node_id: str, ops: LinkOps[L], task_group: Callable[[], TaskGroup], log: logging.Logger
    ) -> None:
        self.node_id = node_id
        self.ops = ops
        self.log = log
        self.relay: RelayHandler | None = None
        self._task_group = task_group
        self._handlers: dict[FrameType, Handler] = {}
        self._pending: dict[int, Pending] = {}
        self._corr = itertools.count(1)
        self._pool = TaskPool()

    # ---- registration --------------------------------------------------------------------------------

    def on(self, frame_type: FrameType, handler: Handler) -> None:
        """Register the handler of one message type (see :meth:`Transport.on`)."""
        if frame_type in CONNECTION_TYPES or frame_type in (FrameType.FRAGMENT, FrameType.PING):
            raise ValueError(f"{frame_type.name} is handled by the transport itself")
        if frame_type in self._handlers:
            raise ValueError(f"a handler for {frame_type.name} is already registered")
        self._handlers[frame_type] = handler

    # ---- requests ------------------------------------------------------------------------------------

    def open_request(self, peer_id: str) -> tuple[int, Pending]:
        """A new correlation id and the slot its reply from ``peer_id`` will land in; free it with
        :meth:`forget_request` once done waiting, then read it with :meth:`result`."""
        corr = next(self._corr) % _CORR_MAX + 1
        if corr == _CORR_MAX:
            self._corr = itertools.count(1)
        pending = Pending(peer_id)
        self._pending[corr] = pending
        return corr, pending

    def forget_request(self, corr: int) -> None:
        """Stop waiting for the reply to ``corr`` (a late one is dropped with a debug line)."""
        self._pending.pop(corr, None)

    @staticmethod
    def result(pending: Pending, msg_name: str, peer: str, limit: float) -> RoutedMessage:
        """The reply a request got.

        Args:
            pending: from :meth:`open_request`.
            msg_name / peer: the request's type and the node it was for, for the errors.
            limit: the timeout it had, for the message.

        Raises:
            PeerUnavailableError: the peer went down while it waited.
            RequestTimeoutError: no reply came.
            RemoteError: the reply was an ``ERROR``.
        """
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        if reply is None:
            raise RequestTimeoutError(f"no reply from {peer} to {msg_name} within {limit:g}s")
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message, peer)
        return reply

    def peer_down(self, peer_id: str, reason: str) -> None:
        """Fail at once every request waiting for a reply from ``peer_id``."""
        err = PeerUnavailableError(f"connection to peer {peer_id} lost: {reason}")
        for p in self._pending.values():
            if p.via == peer_id and p.reply is None:
                p.error = err
                p.event.set()

    # ---- arriving messages ---------------------------------------------------------------------------

    def dispatch(self, link: L, frame: Frame) -> None:
        """Route one frame that arrived on ``link`` (synchronously; handlers run in their own tasks).

        Raises:
            ProtocolError: a connection-level message (the transport handles those it expects first).
        """
        ftype = frame.type
        if ftype in CONNECTION_TYPES:
            raise ProtocolError(ErrorCode.UNEXPECTED, f"{ftype.name} after the handshake")
        try:
            env, msg = decode(ftype, frame.payload)
        except ProtocolError as exc:
            self.log.warning("malformed %s from %s: %s", ftype.name, self.ops.label(link), exc)
            self.send_error(link, Envelope(self.node_id), exc.code, f"malformed {ftype.name}: {exc.message}")
            return
        assert env is not None
        if env.dst and env.dst != self.node_id:
            self._for_another(link, env, msg, frame)
            return
        if env.reply:
            pending = self._pending.get(env.corr)
            if pending is not None and pending.via == self.ops.peer(link).node_id and pending.reply is None:
                pending.reply = msg  # type: ignore[assignment]
                pending.event.set()
            else:
                self.log.debug("dropping late or unknown reply %d from %s", env.corr, self.ops.label(link))
            return
        if ftype == FrameType.PING:
            assert isinstance(msg, Ping)
            if env.wants_reply:
                self.ops.send_now(
                    link, encode(Pong(msg.nonce), Envelope(self.node_id, env.src, env.corr, reply=True))
                )
            return
        incoming = Incoming(self.ops.peer(link), env, msg, ftype, frame.payload)  # type: ignore[arg-type]
        handler = self._handlers.get(ftype)
        if handler is None:
            if ftype == FrameType.ERROR:
                assert isinstance(msg, Error)
                self.log.warning("%s reported %s: %s", self.ops.label(link), msg.code_name, msg.message)
            elif ftype != FrameType.PONG:
                self.log.warning("no handler for %s from %s", ftype.name, self.ops.label(link))
            if env.wants_reply:
                self.send_error(link, env, ErrorCode.NO_HANDLER, f"this node does not handle {ftype.name}")
            return
        self._pool.submit(self._task_group(), self._run_handler, handler, link, incoming)

    def _for_another(self, link: L, env: Envelope, msg: object, frame: Frame) -> None:
        relay = self.relay
        if relay is None:
            self.log.warning("%s sent a %s for %s; no route", self.ops.label(link), frame.type.name, env.dst)
            if env.wants_reply:
                self.send_error(link, env, ErrorCode.NO_ROUTE, f"no route to {env.dst}")
            return
        incoming = Incoming(self.ops.peer(link), env, msg, frame.type, frame.payload)  # type: ignore[arg-type]
        self._pool.submit(self._task_group(), self._run_relay, relay, incoming)

    async def _run_relay(self, relay: RelayHandler, incoming: Incoming) -> None:
        try:
            await relay(incoming)
        except Exception:
            self.log.exception("relay of %s for %s failed", incoming.frame_type.name, incoming.envelope.dst)

    async def _run_handler(self, handler: Handler, link: L, incoming: Incoming) -> None:
        env = incoming.envelope
        try:
            result = await handler(incoming)
        except Exception as exc:
            self.log.exception(
                "handler for %s from %s failed", incoming.frame_type.name, self.ops.label(link)
            )
            if env.wants_reply:
                self.send_error(link, env, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        if not env.wants_reply:
            return
        if result is None:
            self.send_error(link, env, ErrorCode.INTERNAL, f"no reply to {incoming.frame_type.name}")
            return
        try:
            await self.ops.reply(link, encode(result, Envelope(self.node_id, env.src, env.corr, reply=True)))
        except Exception as exc:  # the link closed and no other replaced it
            self.log.warning("could not reply to %s: %s", self.ops.label(link), exc)

    def send_error(self, link: L, env: Envelope, code: ErrorCode, message: str) -> None:
        """Tell the sender of ``env`` what went wrong (as the reply, when it asked for one)."""
        reply = env.wants_reply and not env.reply
        out = Envelope(self.node_id, env.src if reply else "", env.corr if reply else 0, reply=reply)
        self.ops.send_now(link, encode(Error(code, message), out))
