"""The transport contract: what the node (orchestration) may call on the object ``--transport`` selects.

A transport carries exo messages between nodes: it makes itself reachable (:meth:`Transport.run`), keeps
connections to peers (:meth:`~Transport.keep`, :meth:`~Transport.dial`), sends one-way messages and
requests (:meth:`~Transport.send`, :meth:`~Transport.request`), hands what arrives to the handlers
registered with :meth:`~Transport.on`, passes messages addressed to other nodes to the relay handler
(:meth:`~Transport.set_relay`, :meth:`~Transport.forward`), and reports peers coming and going
(:meth:`~Transport.add_peer_listener`). Messages are the routed messages of :mod:`exo_core.protocol.codec`;
on the wire they are the frames of docs/protocol.md, so every transport interoperates with every node.

Implementations: :class:`exo_core.transport.tcp.TcpTransport` (``--transport tcp``, the default) and
:class:`exo_core.transport.memory.MemoryTransport` (in-process, for tests). The node sees only this
protocol; the concrete class is built by the factory registered with ``exo_register_transport``.

What every implementation guarantees (the node relies on it):

- **Order.** Messages sent to one peer arrive in the order they were sent (one FIFO per peer pair);
  handlers are started in arrival order, each in its own task (a handler may await, even a request).
- **Failing fast.** Sending to a node that is not a connected peer raises
  :class:`~exo_core.transport.errors.PeerUnavailableError` at once; when a peer's last connection is lost,
  the listeners get a ``down`` :class:`~exo_core.transport.types.PeerEvent` and every request waiting on
  that peer fails with :class:`~exo_core.transport.errors.PeerUnavailableError`. Nothing waits forever:
  requests time out with :class:`~exo_core.transport.errors.RequestTimeoutError`.
- **Routing.** A message whose ``envelope.dst`` names another node goes to the relay handler (or, without
  one, is dropped with an ``ERROR NO_ROUTE`` reply to a request); :meth:`~Transport.forward` passes it on
  with its TTL decremented, and drops it (``ERROR TTL_EXPIRED`` to a request's sender) when the TTL is 0.
- **Isolation.** A received message never shares memory with the sender's objects (it was encoded and
  decoded), so a sender may reuse its buffers as soon as :meth:`~Transport.send` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from exo_core.protocol.binary import Value
from exo_core.protocol.codec import RoutedMessage
from exo_core.protocol.envelope import DEFAULT_TTL
from exo_core.protocol.header import FrameType
from exo_core.transport.ssh.route import SshRoute
from exo_core.transport.types import Handler, Incoming, PeerInfo, PeerListener, RelayHandler


@runtime_checkable
class Transport(Protocol):
    """How a node talks to other nodes (see the module docstring for the guarantees).

    ``isinstance(obj, Transport)`` checks the members' presence only, and reads the properties: check a
    transport that is running (:attr:`port` raises before :meth:`run` started).
    """

    #: This node's device capabilities (memory, chip, engine, ...), sent to peers when a connection opens.
    #: The node sets it before :meth:`run`; a change reaches only connections opened after it.
    capabilities: dict[str, Value]

    @property
    def node_id(self) -> str:
        """This node's id, sent to peers when a connection opens (their :attr:`PeerInfo.node_id` of us)."""
        ...

    # ---- running and addresses -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Become reachable and serve until cancelled.

        Call ``task_status.started()`` once peers can connect (the listener is bound): the node starts the
        transport with ``await tg.start(transport.run)`` and only then announces it through discovery.
        Every task the transport needs (per-connection readers, handler tasks, redials) runs inside this
        call, so cancelling it stops all of them. Raise ``OSError`` naming the flag to change when the
        transport cannot listen.
        """
        ...

    @property
    def port(self) -> int:
        """The port this node is reachable on (for log lines and ``exo`` output).

        Raises:
            RuntimeError: :meth:`run` has not started yet.
        """
        ...

    @property
    def advertised_address(self) -> str:
        """The address peers should use to reach this node, gossiped in its topology record.

        ``host:port``, or ``:port`` when the host is only known to the peer (a wildcard listener); ``""``
        before :meth:`run` started.
        """
        ...

    # ---- peers ---------------------------------------------------------------------------------------

    @property
    def peers(self) -> dict[str, PeerInfo]:
        """The directly connected peers now, by node id (a new dict on every call). A tool connected to
        this node (``exo ping``), if listed, is marked :attr:`PeerInfo.tool`: it is not a node."""
        ...

    def peer(self, node_id: str) -> PeerInfo | None:
        """A connected peer's info, or ``None`` when it is not connected."""
        ...

    def add_peer_listener(self, listener: PeerListener) -> Callable[[], None]:
        """Call ``listener(event)`` synchronously on every peer ``up`` and ``down``; returns a function that
        unsubscribes it. A listener must not block; an exception it raises is logged, not propagated."""
        ...

    # ---- receiving -----------------------------------------------------------------------------------

    def on(self, frame_type: FrameType, handler: Handler) -> None:
        """Handle the messages of one type that are addressed to this node.

        ``await handler(incoming)`` runs in its own task; for a request (``envelope.wants_reply``) the
        message it returns is sent back as the reply, and an exception it raises (or returning ``None``)
        becomes an ``ERROR`` reply. Messages of a type without handler are logged and, for requests,
        answered with ``ERROR NO_HANDLER``.

        Raises:
            ValueError: a handler for ``frame_type`` is already registered, or the transport handles that
                type itself (connection messages, ``FRAGMENT``, ``PING``).
        """
        ...

    def set_relay(self, handler: RelayHandler | None) -> None:
        """Receive the messages addressed to another node (``envelope.dst``), to pass on with
        :meth:`forward` (the node's router); ``None`` removes it (such messages are then dropped)."""
        ...

    # ---- sending -------------------------------------------------------------------------------------

    async def send(self, peer_id: str, msg: RoutedMessage, *, dst: str = "", ttl: int = DEFAULT_TTL) -> None:
        """Send a one-way message to the connected peer ``peer_id``.

        Args:
            peer_id: a key of :attr:`peers`.
            msg: the message.
            dst: its final recipient when ``peer_id`` is to relay it ("" means ``peer_id`` itself).
            ttl: hops it may still take.

        Returns once the message is handed over (to the OS, for TCP): not once it was handled.

        Raises:
            PeerUnavailableError: ``peer_id`` is not connected.
            ConnectionClosedError: the connection broke while sending.
        """
        ...

    async def request(
        self,
        peer_id: str,
        msg: RoutedMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the per-request timeout is part of the API
        dst: str = "",
        ttl: int = DEFAULT_TTL,
    ) -> RoutedMessage:
        """Send a request to ``peer_id`` and return the reply with the same correlation id.

        Args:
            peer_id: a key of :attr:`peers`.
            msg: the request.
            timeout: seconds to wait for the reply (``None``: the transport's default).
            dst: final recipient when ``peer_id`` is to relay it.
            ttl: hops it may still take.

        Raises:
            PeerUnavailableError: ``peer_id`` is not connected, or its connection was lost while waiting.
            RequestTimeoutError: no reply in time.
            RemoteError: the peer replied with ``ERROR``.
        """
        ...

    async def forward(self, peer_id: str, incoming: Incoming) -> bool:
        """Pass a message received for another node on to ``peer_id``, unchanged but for its TTL.

        Returns:
            ``False`` when the TTL is exhausted: the message is dropped, with a log line and, for a request,
            an ``ERROR TTL_EXPIRED`` reply to its sender.

        Raises:
            PeerUnavailableError: ``peer_id`` is not connected.
        """
        ...

    # ---- connecting (discovery's addresses) ----------------------------------------------------------

    async def dial(self, host: str, port: int, *, ssh: SshRoute | None = None) -> PeerInfo:
        """Connect to ``host:port`` once (the connection stays up) and return the peer's info.

        With ``ssh``, the connection is an SSH link: ``host:port`` is the node's address as the SSH server
        sees it (``ssh -W host:port``). A transport without SSH links raises ``ValueError`` for it.

        Raises:
            OSError: the address cannot be reached (``TimeoutError`` when it took too long;
                :class:`~exo_core.transport.ssh.SshLinkError` with ssh's diagnosis for an SSH link).
            HandshakeError: the other end refused us or is not a compatible exo node.
        """
        ...

    def keep(self, host: str, port: int, *, ssh: SshRoute | None = None) -> None:
        """Keep ``host:port`` (through ``ssh`` when given) connected from now on: connect, and reconnect
        (with backoff) whenever the connection is lost, until :meth:`forget`. Idempotent; returns at once
        (requires :meth:`run`)."""
        ...

    def forget(self, host: str, port: int, *, ssh: SshRoute | None = None) -> None:
        """Stop keeping the address connected and close the connection made for it (no-op if unknown)."""
        ...

    def peer_at(self, host: str, port: int, *, ssh: SshRoute | None = None) -> str | None:
        """The node id a kept address last led to (``None`` before it was first reached, or when not kept):
        how a peers.json entry, a label, is matched to the node that answers there."""
        ...


if TYPE_CHECKING:  # mypy checks here that every implementation in the core honours the contract
    from exo_core.transport.memory import MemoryTransport
    from exo_core.transport.tcp import TcpTransport

    def _implementations(tcp: TcpTransport, memory: MemoryTransport) -> tuple[Transport, Transport]:
        return tcp, memory
