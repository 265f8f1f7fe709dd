"""The connection handshake: HELLO both ways, optional mutual HMAC authentication, READY both ways.

Without a key each side sends its HELLO at once and READY once it accepted the peer's: one round trip.
With a key a peer learns nothing but the protocol versions and a challenge until it proved the key: each
side sends an anonymous HELLO (versions and flags) and AUTH_CHALLENGE at once; the dialer answers the
acceptor's challenge, the acceptor answers the dialer's only once that answer verified; each side sends its
full HELLO once the peer's AUTH_RESPONSE verified; then READY. Any failure sends an
``ERROR`` frame naming the reason, so both sides can log the same diagnosis, and raises
:class:`~exo_core.transport.errors.HandshakeError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio

from exo_core.protocol.auth import auth_mac, new_nonce, verify_mac
from exo_core.protocol.binary import Value
from exo_core.protocol.codec import Message, decode, encode
from exo_core.protocol.control import (
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthResponse,
    Error,
    Hello,
    Ready,
)
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.header import HEADER_SIZE, FrameType
from exo_core.transport.connection import Connection
from exo_core.transport.errors import HandshakeError
from exo_core.transport.types import PeerInfo


@dataclass(frozen=True)
class LocalIdentity:
    """What this side says in its HELLO."""

    node_id: str
    address: str
    agent: str
    instance: int
    capabilities: dict[str, Value]
    key: bytes | None
    tool: bool = False
    min_version: int = PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION


def _reject(conn: Connection, code: ErrorCode, to_peer: str, ours: str) -> HandshakeError:
    try:
        conn.send_nowait(encode(Error(code, to_peer)).parts)
    except Exception:  # the connection may already be gone; our own log line still says why
        pass
    return HandshakeError(code, ours)


async def _expect(conn: Connection, want: FrameType, stage: str) -> tuple[Message, bytes]:
    try:
        frame = await conn.read_frame()
    except ProtocolError as exc:
        raise _reject(conn, exc.code, str(exc), f"{stage}: {exc.message}") from None
    if frame.type == FrameType.ERROR:
        try:
            _, err = decode(frame.type, frame.payload)
        except ProtocolError as exc:
            raise HandshakeError(exc.code, f"{stage}: peer sent a malformed ERROR: {exc.message}") from None
        assert isinstance(err, Error)
        try:
            code = ErrorCode(err.code)
        except ValueError:
            code = ErrorCode.UNEXPECTED
        raise HandshakeError(code, f"peer rejected us: {err.code_name}: {err.message}", from_peer=True)
    if frame.type != want:
        raise _reject(
            conn,
            ErrorCode.UNEXPECTED,
            f"expected {want.name} during the handshake, got {frame.type.name}",
            f"{stage}: expected {want.name}, got {frame.type.name}",
        )
    try:
        _, msg = decode(frame.type, frame.payload)
    except ProtocolError as exc:
        raise _reject(conn, exc.code, str(exc), f"{stage}: malformed {want.name}: {exc.message}") from None
    return msg, bytes(frame.payload)


async def handshake(
    conn: Connection,
    me: LocalIdentity,
    *,
    conn_seq: int,
    within: float,
    admit: Callable[[PeerInfo], str | None] | None = None,
) -> PeerInfo:
    """Run the handshake on a fresh connection and return what the peer said about itself.

    Args:
        conn: the fresh connection.
        me: what this side says about itself.
        conn_seq: this side's dial counter (dialer only).
        within: seconds the whole handshake may take.
        admit: called with the accepted peer just before READY; a returned reason refuses it with
            ``ERROR UNAVAILABLE`` (e.g. the node is at its connection limit).

    Raises:
        HandshakeError: version mismatch, authentication failure, timeout, bad framing, or talking to itself.
        ConnectionClosedError: the peer closed the connection.
    """
    try:
        with anyio.fail_after(within):
            return await _handshake(conn, me, conn_seq, admit)
    except TimeoutError:
        raise _reject(
            conn,
            ErrorCode.TIMEOUT,
            f"handshake not finished within {within:g}s",
            f"handshake with {conn.remote} not finished within {within:g}s (is it an exo node? is the "
            "tunnel forwarding to the right port?)",
        ) from None


async def _handshake(
    conn: Connection, me: LocalIdentity, conn_seq: int, admit: Callable[[PeerInfo], str | None] | None
) -> PeerInfo:
    hello = Hello(
        me.node_id,
        me.min_version,
        me.max_version,
        me.instance,
        conn_seq if conn.dialed else 0,
        conn.dialed,
        me.key is not None,
        me.tool,
        me.address,
        me.agent,
        me.capabilities,
    )
    # With a key, who we are waits until the peer proved it has the key: first an anonymous HELLO.
    first = Hello.anonymous_of(hello) if me.key is not None else hello
    encoded = encode(first)
    my_first = bytes(memoryview(encoded.parts[0])[HEADER_SIZE:])
    conn.send_nowait(encoded.parts)
    my_nonce = new_nonce()
    if me.key is not None:
        conn.send_nowait(encode(AuthChallenge(my_nonce)).parts)

    msg, peer_first = await _expect(conn, FrameType.HELLO, "HELLO")
    assert isinstance(msg, Hello)
    peer = msg
    label = f"{peer.node_id} ({conn.remote})" if peer.node_id else conn.remote
    version = min(me.max_version, peer.max_version)
    if version < max(me.min_version, peer.min_version):
        raise _reject(
            conn,
            ErrorCode.VERSION_MISMATCH,
            f"protocol versions {me.min_version}..{me.max_version} do not overlap yours "
            f"{peer.min_version}..{peer.max_version}",
            f"peer {label} speaks protocol {peer.min_version}..{peer.max_version}, we speak "
            f"{me.min_version}..{me.max_version}: upgrade the older node",
        )
    if me.key is not None and not peer.auth:
        raise _reject(
            conn,
            ErrorCode.AUTH_REQUIRED,
            "this node requires a cluster key: start with the same --cluster-key / EXO_CLUSTER_KEY",
            f"peer {label} has no cluster key but this node requires one: start it with the same "
            "--cluster-key / EXO_CLUSTER_KEY",
        )
    if me.key is None and peer.auth:
        raise _reject(
            conn,
            ErrorCode.AUTH_REQUIRED,
            "this node has no cluster key: start both nodes with the same --cluster-key / EXO_CLUSTER_KEY",
            f"peer {label} requires a cluster key but this node has none: "
            "set --cluster-key / EXO_CLUSTER_KEY",
        )
    if me.key is not None:
        if not peer.anonymous:
            raise _reject(
                conn,
                ErrorCode.UNEXPECTED,
                "with a cluster key the first HELLO must be anonymous (identity after authentication)",
                f"peer {label} sent its identity before authenticating (a protocol version 1 node?)",
            )
        msg, _ = await _expect(conn, FrameType.AUTH_CHALLENGE, "AUTH_CHALLENGE")
        assert isinstance(msg, AuthChallenge)
        peer_nonce = msg.nonce
        response = encode(AuthResponse(auth_mac(me.key, peer_nonce, my_nonce, my_first, peer_first)))
        if conn.dialed:  # the dialer answers first: whoever connects gets no MAC to guess the key from
            conn.send_nowait(response.parts)
        msg, _ = await _expect(conn, FrameType.AUTH_RESPONSE, "AUTH_RESPONSE")
        assert isinstance(msg, AuthResponse)
        expected = auth_mac(me.key, my_nonce, peer_nonce, peer_first, my_first)
        if not verify_mac(expected, msg.mac):
            raise _reject(
                conn,
                ErrorCode.AUTH_FAILED,
                "authentication failed: your cluster key differs from this node's",
                f"peer {label} failed authentication: its cluster key differs from this node's",
            )
        if not conn.dialed:
            conn.send_nowait(response.parts)
        # the peer proved the key: now each side says who it is
        conn.send_nowait(encode(hello).parts)
        msg, _ = await _expect(conn, FrameType.HELLO, "HELLO after authentication")
        assert isinstance(msg, Hello)
        if msg.anonymous or (msg.min_version, msg.max_version, msg.dialer, msg.auth) != (
            peer.min_version,
            peer.max_version,
            peer.dialer,
            peer.auth,
        ):
            raise _reject(
                conn,
                ErrorCode.MALFORMED,
                "your HELLO after authentication must name you and repeat your first HELLO's versions/flags",
                f"peer at {conn.remote} sent an anonymous or inconsistent HELLO after authenticating",
            )
        peer = msg
        label = f"{peer.node_id} ({conn.remote})"
    if peer.node_id == me.node_id and not me.tool:
        raise _reject(
            conn,
            ErrorCode.SELF_CONNECTION,
            "you connected to yourself (same node id)",
            f"{conn.remote} is this node itself (node id {me.node_id}); not connecting to itself",
        )
    info = PeerInfo(
        node_id=peer.node_id,
        version=version,
        capabilities=peer.capabilities,
        address=peer.address,
        remote_address=conn.remote,
        agent=peer.agent,
        instance=peer.instance,
        dialed=conn.dialed,
        tool=peer.tool,
        conn_seq=peer.conn_seq if not conn.dialed else conn_seq,
    )
    refusal = admit(info) if admit is not None else None
    if refusal is not None:
        raise _reject(conn, ErrorCode.UNAVAILABLE, refusal, f"refused {label}: {refusal}")
    conn.send_nowait(encode(Ready()).parts)
    await _expect(conn, FrameType.READY, "READY")
    try:  # frames that came right behind the READY are parsed only now, under the full limit
        conn.handshake_done()
    except ProtocolError as exc:
        raise _reject(conn, exc.code, str(exc), f"right after READY: {exc.message}") from None
    return info
