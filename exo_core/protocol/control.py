"""Connection and control messages: HELLO, AUTH_CHALLENGE, AUTH_RESPONSE, READY, GOAWAY, PING, PONG, ERROR."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from exo_core.protocol.binary import Reader, Value, Writer
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.header import FrameType

#: Protocol versions this implementation speaks (negotiated in HELLO). Version 2: a keyed node's first HELLO
#: is anonymous (its identity follows authentication); version 1 sent it before.
PROTOCOL_VERSION: Final = 2
NONCE_SIZE: Final = 32
MAC_SIZE: Final = 32

HELLO_DIALER: Final = 0x01
HELLO_AUTH: Final = 0x02
HELLO_TOOL: Final = 0x04


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each side sends.

    A sender with a cluster key first sends an *anonymous* HELLO (:meth:`anonymous_of`: versions and the
    dialer and auth flags, every identity field empty) and its full HELLO only once the peer proved the key.

    Attributes:
        node_id: the sender's node id (authoritative: discovery names are only labels); "" when anonymous.
        min_version / max_version: protocol versions the sender speaks.
        instance: random per-process number; a new value for a known node id means the peer restarted.
        conn_seq: the dialer's per-process connection counter (0 in the acceptor's HELLO).
        dialer: the sender opened this connection.
        auth: the sender has a cluster key and will send AUTH_CHALLENGE.
        tool: the sender is a tool (``exo ping``), not a node: it is not added to the peer table.
        address: ``host:port`` the sender listens on, as it advertises it ("" if not listening).
        agent: software name and version, for logs.
        capabilities: device capabilities (model, chip, memory, flops, ...), a map of tagged values.
    """

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    node_id: str
    min_version: int = PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    instance: int = 0
    conn_seq: int = 0
    dialer: bool = False
    auth: bool = False
    tool: bool = False
    address: str = ""
    agent: str = ""
    capabilities: dict[str, Value] = field(default_factory=dict)

    @classmethod
    def anonymous_of(cls, hello: Hello) -> Hello:
        """The HELLO a keyed sender shows before authentication: what ``hello`` says minus who it is."""
        return cls("", hello.min_version, hello.max_version, dialer=hello.dialer, auth=True)

    @property
    def anonymous(self) -> bool:
        """Sent before authentication: versions and flags only (see :meth:`anonymous_of`)."""
        return not self.node_id

    def write(self, w: Writer) -> None:
        w.u16(self.min_version)
        w.u16(self.max_version)
        w.u8(
            (HELLO_DIALER if self.dialer else 0)
            | (HELLO_AUTH if self.auth else 0)
            | (HELLO_TOOL if self.tool else 0)
        )
        w.u64(self.instance)
        w.u64(self.conn_seq)
        w.str8(self.node_id)
        w.str8(self.address)
        w.str8(self.agent)
        w.value(self.capabilities)

    @classmethod
    def read(cls, r: Reader) -> Hello:
        lo, hi = r.u16("HELLO min_version"), r.u16("HELLO max_version")
        if lo > hi:
            raise ProtocolError(ErrorCode.MALFORMED, f"HELLO: min_version {lo} > max_version {hi}")
        flags = r.u8("HELLO flags")
        if flags & ~(HELLO_DIALER | HELLO_AUTH | HELLO_TOOL):
            raise ProtocolError(ErrorCode.MALFORMED, f"HELLO: unknown flags 0x{flags:02x}")
        instance, conn_seq = r.u64("HELLO instance"), r.u64("HELLO conn_seq")
        node_id, address, agent = r.str8("HELLO node_id"), r.str8("HELLO address"), r.str8("HELLO agent")
        caps = r.value(what="HELLO capabilities")
        if not isinstance(caps, dict):
            raise ProtocolError(ErrorCode.MALFORMED, "HELLO: capabilities must be a map")
        if not node_id and (
            not flags & HELLO_AUTH or flags & HELLO_TOOL or instance or conn_seq or address or agent or caps
        ):
            raise ProtocolError(
                ErrorCode.MALFORMED,
                "HELLO: empty node id (only an anonymous HELLO, sent before authentication, has none, and it "
                "carries nothing but the versions and the dialer and auth flags)",
            )
        return cls(
            node_id,
            lo,
            hi,
            instance,
            conn_seq,
            bool(flags & HELLO_DIALER),
            bool(flags & HELLO_AUTH),
            bool(flags & HELLO_TOOL),
            address,
            agent,
            caps,
        )


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """A fresh 32-byte nonce the peer must answer with an HMAC (see :mod:`exo_core.protocol.auth`)."""

    TYPE: ClassVar[FrameType] = FrameType.AUTH_CHALLENGE
    nonce: bytes

    def write(self, w: Writer) -> None:
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        w.raw(self.nonce)

    @classmethod
    def read(cls, r: Reader) -> AuthChallenge:
        return cls(bytes(r.raw(NONCE_SIZE, "AUTH_CHALLENGE nonce")))


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """HMAC-SHA256 proving the sender knows the cluster key."""

    TYPE: ClassVar[FrameType] = FrameType.AUTH_RESPONSE
    mac: bytes

    def write(self, w: Writer) -> None:
        if len(self.mac) != MAC_SIZE:
            raise ValueError(f"mac must be {MAC_SIZE} bytes")
        w.raw(self.mac)

    @classmethod
    def read(cls, r: Reader) -> AuthResponse:
        return cls(bytes(r.raw(MAC_SIZE, "AUTH_RESPONSE mac")))


@dataclass(frozen=True, slots=True)
class Ready:
    """The sender accepted the peer (versions agree, authentication passed): the connection is up."""

    TYPE: ClassVar[FrameType] = FrameType.READY

    def write(self, w: Writer) -> None:
        pass

    @classmethod
    def read(cls, r: Reader) -> Ready:
        return cls()


@dataclass(frozen=True, slots=True)
class GoAway:
    """The sender will send nothing more on this connection (it keeps reading until the peer's GOAWAY)."""

    TYPE: ClassVar[FrameType] = FrameType.GOAWAY
    reason: str = ""

    def write(self, w: Writer) -> None:
        w.str16(self.reason)

    @classmethod
    def read(cls, r: Reader) -> GoAway:
        return cls(r.str16("GOAWAY reason"))


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; answered with a PONG echoing ``nonce``."""

    TYPE: ClassVar[FrameType] = FrameType.PING
    nonce: int = 0

    def write(self, w: Writer) -> None:
        w.u64(self.nonce)

    @classmethod
    def read(cls, r: Reader) -> Ping:
        return cls(r.u64("PING nonce"))


@dataclass(frozen=True, slots=True)
class Pong:
    """Reply to PING."""

    TYPE: ClassVar[FrameType] = FrameType.PONG
    nonce: int = 0

    def write(self, w: Writer) -> None:
        w.u64(self.nonce)

    @classmethod
    def read(cls, r: Reader) -> Pong:
        return cls(r.u64("PONG nonce"))


@dataclass(frozen=True, slots=True)
class Error:
    """An error: a reply to a failed request, a protocol violation before closing, or a request's failure.

    Attributes:
        code: an :class:`~exo_core.protocol.errors.ErrorCode` value (unknown codes are kept as ints).
        message: human-readable, actionable text.
        request_id: the inference request it concerns ("" if none).
    """

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: int
    message: str = ""
    request_id: str = ""

    def write(self, w: Writer) -> None:
        w.u16(int(self.code))
        w.str16(self.message)
        w.str8(self.request_id)

    @classmethod
    def read(cls, r: Reader) -> Error:
        return cls(r.u16("ERROR code"), r.str16("ERROR message"), r.str8("ERROR request_id"))

    @property
    def code_name(self) -> str:
        """The code's name (``AUTH_FAILED``) or its number if unknown."""
        try:
            return ErrorCode(self.code).name
        except ValueError:
            return str(self.code)
