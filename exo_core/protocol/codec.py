"""Encoding messages into frames and decoding frames into messages (no I/O).

Connection messages (HELLO, AUTH_*, READY, GOAWAY) have no envelope; every other message starts with an
:class:`~exo_core.protocol.envelope.Envelope`. Encoding returns a list of buffers for a scatter-gather
write: the header bytes, then any tensor data as the caller's own buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from exo_core.protocol.binary import Reader, Writer
from exo_core.protocol.buffers import Buffer
from exo_core.protocol.control import AuthChallenge, AuthResponse, Error, GoAway, Hello, Ping, Pong, Ready
from exo_core.protocol.envelope import Envelope
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.header import HEADER, MAGIC, FrameType
from exo_core.protocol.inference import Finish, Progress, Prompt, TensorMessage, Token, Topology

ConnectionMessage = Hello | AuthChallenge | AuthResponse | Ready | GoAway
RoutedMessage = Ping | Pong | Error | Prompt | TensorMessage | Token | Finish | Topology | Progress
Message = ConnectionMessage | RoutedMessage

MESSAGE_CLASSES: Final[dict[FrameType, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        AuthChallenge,
        AuthResponse,
        Ready,
        GoAway,
        Ping,
        Pong,
        Error,
        Prompt,
        TensorMessage,
        Token,
        Finish,
        Topology,
        Progress,
    )
}
CONNECTION_TYPES: Final = frozenset(
    {FrameType.HELLO, FrameType.AUTH_CHALLENGE, FrameType.AUTH_RESPONSE, FrameType.READY, FrameType.GOAWAY}
)


_BLANK_HEADER: Final = bytes(HEADER.size)
_NO_ENVELOPE: Final = Envelope()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A message ready to write: ``parts`` concatenated are the whole frame (header included)."""

    type: FrameType
    parts: list[Buffer]
    payload_size: int

    def tobytes(self) -> bytes:
        """The frame as one bytes object (copies; for tests and small frames)."""
        return b"".join(bytes(p) for p in self.parts)

    def payload_parts(self) -> list[Buffer]:
        """The parts without the 9-byte frame header (for fragmenting)."""
        first = memoryview(self.parts[0])[HEADER.size :]
        return [first, *self.parts[1:]]


def encode(msg: Message, envelope: Envelope | None = None) -> Encoded:
    """Encode ``msg`` (with ``envelope`` for routed messages) into the buffers of one frame.

    Raises:
        ValueError: the message cannot be encoded (string too long, bad tensor, missing envelope).
    """
    w = Writer()
    w.raw(_BLANK_HEADER)  # patched below once the length is known
    if msg.TYPE in CONNECTION_TYPES:
        if envelope is not None:
            raise ValueError(f"{msg.TYPE.name} is a connection message and takes no envelope")
    else:
        (envelope or _NO_ENVELOPE).write(w)
    extra = msg.write(w)
    head = w.buffer()
    size = len(head) - HEADER.size
    if extra:
        size += sum(memoryview(p).nbytes for p in extra)
        HEADER.pack_into(head, 0, MAGIC, msg.TYPE, size)
        return Encoded(msg.TYPE, [head, *extra], size)
    HEADER.pack_into(head, 0, MAGIC, msg.TYPE, size)
    return Encoded(msg.TYPE, [head], size)


def encode_bytes(msg: Message, envelope: Envelope | None = None) -> bytes:
    """Encode into one bytes object (convenience for small messages and tests)."""
    return encode(msg, envelope).tobytes()


def decode(frame_type: FrameType | int, payload: Buffer) -> tuple[Envelope | None, Message]:
    """Decode one frame's payload; the envelope is ``None`` for connection messages.

    Tensor data in the result is a view into ``payload`` (no copy).

    Raises:
        ProtocolError: unknown type or malformed payload (the only exception raised for bad input).
    """
    try:
        ftype = FrameType(frame_type)
        cls = MESSAGE_CLASSES[ftype]
    except (ValueError, KeyError):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"no message type 0x{int(frame_type):02x}") from None
    r = Reader(payload)
    envelope = None if ftype in CONNECTION_TYPES else Envelope.read(r)
    msg = cls.read(r)
    r.end(ftype.name)
    return envelope, msg
