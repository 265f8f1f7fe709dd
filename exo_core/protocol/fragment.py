"""``FRAGMENT`` frames: a large message cut into chunks so that small frames can go between them.

``FRAGMENT payload = u32 stream_id | u8 flags | [u8 inner_type | u32 total_length] (first only) | data``
(docs/protocol.md §2). This module holds that layout and the sending side (:class:`Fragmenter`, which cuts
without copying); :class:`~exo_core.protocol.frame.FrameParser` reassembles on the receiving side.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Final

from exo_core.protocol.buffers import Buffer
from exo_core.protocol.header import FrameType, frame_header

FRAG_FIRST: Final = 0x01
FRAG_LAST: Final = 0x02
FRAG_HEAD: Final = struct.Struct(">IB")  # stream id, flags
FRAG_FIRST_HEAD: Final = struct.Struct(">BI")  # inner type, total length (only on the first fragment)


def fragments(
    frame_type: int, parts: Sequence[Buffer], stream_id: int, chunk_size: int
) -> Iterator[list[Buffer]]:
    """Cut one message (given as buffers, e.g. header bytes + a tensor's memoryview) into ``FRAGMENT`` frames.

    Yields the buffers of each fragment frame (header, fragment header, then views into ``parts``: no copy
    of the data). Each fragment carries at most ``chunk_size`` data bytes. See :class:`Fragmenter` for
    fragments whose size is chosen one at a time.
    """
    cutter = Fragmenter(frame_type, parts, stream_id)
    while (frame := cutter.next(chunk_size)) is not None:
        yield frame


class Fragmenter:
    """Cuts one message into ``FRAGMENT`` frames, each as large as the caller asks when it asks.

    Args:
        frame_type: the message's type (declared in the first fragment).
        parts: the message payload as buffers (not copied: fragments are views into them).
        stream_id: the sender's id for this message on its connection.
    """

    def __init__(self, frame_type: int, parts: Sequence[Buffer], stream_id: int) -> None:
        self.frame_type = frame_type
        self.stream_id = stream_id
        views = [memoryview(p) for p in parts]
        self._views = [v if v.format == "B" and v.ndim == 1 else v.cast("B") for v in views]
        self.total = sum(len(v) for v in self._views)
        self.sent = 0
        self._idx = 0
        self._off = 0
        self._first = True

    def next(self, chunk_size: int) -> list[Buffer] | None:
        """The buffers of the next fragment frame (at most ``chunk_size`` data bytes), ``None`` when done."""
        if not self._first and self.sent >= self.total:
            return None
        want = min(chunk_size, self.total - self.sent)
        chunk: list[Buffer] = []
        got = 0
        while got < want:
            v = self._views[self._idx]
            take = min(want - got, len(v) - self._off)
            if take:
                chunk.append(v[self._off : self._off + take])
            got += take
            self._off += take
            if self._off == len(v):
                self._idx, self._off = self._idx + 1, 0
        self.sent += want
        flags = (FRAG_FIRST if self._first else 0) | (FRAG_LAST if self.sent == self.total else 0)
        head = FRAG_HEAD.pack(self.stream_id, flags)
        if self._first:
            head += FRAG_FIRST_HEAD.pack(self.frame_type, self.total)
            self._first = False
        return [frame_header(FrameType.FRAGMENT, len(head) + want), head, *chunk]
