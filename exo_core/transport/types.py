"""Public data types of the transport: peer info, peer events, incoming messages, handler signatures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from exo_core.protocol.binary import Value
from exo_core.protocol.buffers import Buffer
from exo_core.protocol.codec import RoutedMessage
from exo_core.protocol.envelope import Envelope
from exo_core.protocol.header import FrameType


@dataclass(frozen=True)
class PeerInfo:
    """What a peer said about itself in its HELLO, plus how we reached it.

    Attributes:
        node_id: the peer's node id (authoritative).
        version: the negotiated protocol version.
        capabilities: the peer's device capabilities (model, chip, memory, flops, ...).
        address: the ``host:port`` the peer advertises ("" or ``:port`` if it listens on all interfaces).
        remote_address: the peer's address as seen on the socket.
        agent: the peer's software and version.
        instance: random per-process number (changes when the peer restarts).
        dialed: this node opened the connection.
        tool: the peer is a tool (``exo ping``), not a node.
    """

    node_id: str
    version: int
    capabilities: dict[str, Value] = field(default_factory=dict, compare=False)
    address: str = ""
    remote_address: str = ""
    agent: str = ""
    instance: int = 0
    dialed: bool = False
    tool: bool = False
    conn_seq: int = 0


@dataclass(frozen=True)
class PeerEvent:
    """A peer became reachable (``up``) or lost its last connection (``down``; pending requests failed)."""

    kind: Literal["up", "down"]
    peer: PeerInfo
    reason: str = ""


@dataclass(frozen=True)
class Incoming:
    """A message received from a directly connected peer.

    Attributes:
        peer: the neighbour it arrived from (the original sender is ``envelope.src``).
        envelope: routing and correlation header.
        message: the decoded message (tensor data is a view into ``payload``: no copy).
        frame_type: its type.
        payload: the raw payload, for :meth:`TcpTransport.forward` (relaying without re-encoding).
    """

    peer: PeerInfo
    envelope: Envelope
    message: RoutedMessage
    frame_type: FrameType
    payload: Buffer


#: Handles one message type. For a request (``envelope.wants_reply``) the returned message is the reply;
#: raising sends an ``ERROR`` reply. Runs in its own task, so it may await (even other requests).
Handler = Callable[[Incoming], Awaitable[RoutedMessage | None]]
#: Gets messages whose ``envelope.dst`` is another node (to relay them with :meth:`TcpTransport.forward`).
RelayHandler = Callable[[Incoming], Awaitable[None]]
#: Called synchronously on every peer up/down event; must not block.
PeerListener = Callable[[PeerEvent], None]
