"""A memory transport's messaging: handlers, sending, request matching, relaying, as TcpTransport does it.

Frames that arrive on a link go through the real :class:`~exo_core.protocol.frame.FrameParser` and
:func:`~exo_core.protocol.codec.decode`; what a node sends is encoded by
:func:`~exo_core.protocol.codec.encode`.
Dispatch is :class:`~exo_core.transport.dispatch.Dispatcher`, the one TcpTransport uses: messages for
another node go to the relay handler, replies to the request waiting for them, ``PING`` is answered at
once, everything else to the handler of its type in a pooled task; bad input becomes an ``ERROR`` (and a
bad frame drops the link).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from exo_core.protocol.codec import Encoded, RoutedMessage, encode
from exo_core.protocol.envelope import DEFAULT_TTL, Envelope, decrement_ttl
from exo_core.protocol.errors import ProtocolError
from exo_core.protocol.frame import FrameParser
from exo_core.protocol.header import FrameType, frame_header
from exo_core.transport.dispatch import Dispatcher, LinkOps
from exo_core.transport.errors import PeerUnavailableError
from exo_core.transport.memory.links import End
from exo_core.transport.types import Handler, Incoming, PeerEvent, PeerInfo, PeerListener, RelayHandler

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
        self._listeners: list[PeerListener] = []
        self._ends: dict[str, End] = {}
        self._tg: TaskGroup | None = None
        self._dispatcher = Dispatcher(
            node_id, LinkOps(_peer, _label, _send_now, self._reply), self._group, log
        )

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
        self._dispatcher.on(frame_type, handler)

    def set_relay(self, handler: RelayHandler | None) -> None:
        self._dispatcher.relay = handler

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
        corr, pending = self._dispatcher.open_request(peer_id)
        limit = self.request_timeout if timeout is None else timeout
        try:
            encoded = encode(msg, Envelope(self.node_id, dst or peer_id, corr, wants_reply=True, ttl=ttl))
            self._end(peer_id).outbound.put(encoded.tobytes())
            with anyio.move_on_after(limit):
                await pending.event.wait()
        finally:
            self._dispatcher.forget_request(corr)
        return self._dispatcher.result(pending, msg.TYPE.name, dst or peer_id, limit)

    async def forward(self, peer_id: str, incoming: Incoming) -> bool:
        payload = bytearray(incoming.payload)  # a copy, as TCP's own buffer: the TTL is patched in place
        try:
            decrement_ttl(payload)
        except ProtocolError as exc:
            env = incoming.envelope
            log.warning("dropping %s from %s for %s: %s", incoming.frame_type.name, env.src, env.dst, exc)
            back = self._ends.get(incoming.peer.node_id)
            if back is not None and env.wants_reply:
                self._dispatcher.send_error(back, env, exc.code, f"TTL expired at {self.node_id}")
            return False
        end = self._end(peer_id)
        await anyio.lowlevel.checkpoint()
        end.outbound.put(frame_header(incoming.frame_type, len(payload)) + payload)
        return True

    # ---- peer events ---------------------------------------------------------------------------------

    def _emit(self, event: PeerEvent) -> None:
        if event.kind == "down":
            self._dispatcher.peer_down(event.peer.node_id, event.reason)
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
                        self._dispatcher.dispatch(end, frame)
                except ProtocolError as exc:
                    log.warning("closing the memory link to %s: %s", end.info.node_id, exc)
                    self._dispatcher.send_error(end, Envelope(self.node_id), exc.code, exc.message)
                    end.drop(str(exc))
                    return

    def _group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the transport is not running")
        return self._tg

    async def _reply(self, end: End, encoded: Encoded) -> None:
        """A handler's reply: on the link the request came on, or the one that replaced it."""
        out = end if self._ends.get(end.info.node_id) is end else self._end(end.info.node_id)
        out.outbound.put(encoded.tobytes())


def _peer(end: End) -> PeerInfo:
    return end.info


def _label(end: End) -> str:
    return end.info.node_id


def _send_now(end: End, encoded: Encoded) -> None:
    end.outbound.put(encoded.tobytes())
