"""The routing envelope that starts the payload of every node-to-node message.

``u8 flags | u8 ttl | u32 corr | str8 src | str8 dst``. ``ttl`` sits at byte 1 of the payload so a relay
decrements it in place and forwards the frame without decoding (let alone re-encoding) the rest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from exo_core.protocol.binary import Reader, Writer
from exo_core.protocol.errors import ErrorCode, ProtocolError

FLAG_REPLY: Final = 0x01
FLAG_WANTS_REPLY: Final = 0x02
KNOWN_FLAGS: Final = FLAG_REPLY | FLAG_WANTS_REPLY
TTL_OFFSET: Final = 1
DEFAULT_TTL: Final = 8
_HEAD: Final = struct.Struct(">BBI")  # flags, ttl, corr


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who a message is from and for, and how it pairs with a request.

    Attributes:
        src: node id of the original sender ("" for a tool such as ``exo ping``).
        dst: node id of the final recipient ("" means whoever receives it on this connection).
        corr: correlation id: a request's id, echoed by its reply; 0 for one-way messages.
        reply: this message answers request ``corr``.
        wants_reply: the sender waits for a reply carrying the same ``corr``.
        ttl: hops left; each relay decrements it and drops the message (``ERROR TTL_EXPIRED``) at 0.
    """

    src: str = ""
    dst: str = ""
    corr: int = 0
    reply: bool = False
    wants_reply: bool = False
    ttl: int = DEFAULT_TTL

    def write(self, w: Writer) -> None:
        flags = (FLAG_REPLY if self.reply else 0) | (FLAG_WANTS_REPLY if self.wants_reply else 0)
        w.pack(_HEAD, flags, self.ttl, self.corr)
        w.str8(self.src)
        w.str8(self.dst)

    @classmethod
    def read(cls, r: Reader) -> Envelope:
        flags, ttl, corr = r.unpack(_HEAD, "envelope")
        if flags & ~KNOWN_FLAGS:
            raise ProtocolError(ErrorCode.MALFORMED, f"envelope: unknown flags 0x{flags:02x}")
        if flags & FLAG_REPLY and flags & FLAG_WANTS_REPLY:
            raise ProtocolError(ErrorCode.MALFORMED, "envelope: a reply cannot ask for a reply")
        if corr == 0 and flags:
            raise ProtocolError(ErrorCode.MALFORMED, "envelope: request or reply with correlation id 0")
        src = r.str8("envelope src")
        dst = r.str8("envelope dst")
        return cls(src, dst, corr, bool(flags & FLAG_REPLY), bool(flags & FLAG_WANTS_REPLY), ttl)


def decrement_ttl(payload: bytearray | memoryview) -> int:
    """Decrement the TTL of an enveloped payload in place (for relaying); returns the new TTL.

    Raises:
        ProtocolError: the payload is too short to hold an envelope or its TTL is already 0.
    """
    if len(payload) <= TTL_OFFSET:
        raise ProtocolError(ErrorCode.MALFORMED, "payload too short for an envelope")
    ttl = payload[TTL_OFFSET]
    if ttl == 0:
        raise ProtocolError(ErrorCode.TTL_EXPIRED, "message TTL expired")
    payload[TTL_OFFSET] = ttl - 1
    return ttl - 1
