"""The frame format: ``magic 'EXO\\x01' | u8 type | u32 length (big-endian) | payload`` (docs/protocol.md §1).

Every byte on a connection belongs to a frame. This module holds the layout of the 9-byte header, the message
type codes of its type byte (:class:`FrameType`), the :class:`Frame` a receiver gets and the encoding of a
header. Frames are received by :class:`~exo_core.protocol.frame.FrameParser`; a large message is cut into
``FRAGMENT`` frames by :mod:`exo_core.protocol.fragment`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from exo_core.protocol.buffers import Buffer

MAGIC: Final = b"EXO\x01"
HEADER: Final = struct.Struct(">4sBI")
HEADER_SIZE: Final = HEADER.size  # 9


class FrameType(IntEnum):
    """Message types (the frame's type byte). Codes are normative; see docs/protocol.md."""

    HELLO = 0x01
    AUTH_CHALLENGE = 0x02
    AUTH_RESPONSE = 0x03
    READY = 0x04
    GOAWAY = 0x05
    FRAGMENT = 0x06
    PING = 0x10
    PONG = 0x11
    ERROR = 0x12
    PROMPT = 0x20
    TENSOR = 0x21
    TOKEN = 0x22
    FINISH = 0x23
    TOPOLOGY = 0x24
    PROGRESS = 0x25


FRAME_TYPES: Final = frozenset(int(t) for t in FrameType)


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame (or one reassembled fragmented message)."""

    type: FrameType
    payload: Buffer


def frame_header(frame_type: int, length: int) -> bytes:
    """The 9-byte header of a frame whose payload is ``length`` bytes."""
    return HEADER.pack(MAGIC, frame_type, length)


def encode_frame(frame_type: int, payload: Buffer) -> bytes:
    """A complete frame as one bytes object (for small frames and tests)."""
    return HEADER.pack(MAGIC, frame_type, len(payload)) + bytes(payload)
