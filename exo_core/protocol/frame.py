"""Frames: ``magic 'EXO\\x01' | u8 type | u32 length (big-endian) | payload``, and a sans-I/O parser.

:class:`FrameParser` is fed from a socket without copies for large payloads: the caller reads into
:meth:`FrameParser.buffer` (``sock.recv_into``) and reports the byte count to :meth:`FrameParser.advance`,
which returns complete frames. Small frames are read many at a time into a scratch buffer; a large payload
gets its own buffer, allocated only after its declared length passed the limit check. ``FRAGMENT`` frames
(a large message cut into chunks so small frames can be interleaved) are reassembled straight into one
preallocated buffer per message.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from exo_core.protocol.errors import ErrorCode, ProtocolError

MAGIC: Final = b"EXO\x01"
HEADER: Final = struct.Struct(">4sBI")
HEADER_SIZE: Final = HEADER.size  # 9
DEFAULT_MAX_FRAME_SIZE: Final = 256 * 1024 * 1024
#: largest frame a peer may send before its READY has been accepted: HELLO and the authentication frames
#: are a few hundred bytes, so a peer that has not authenticated cannot make the node buffer more
HANDSHAKE_MAX_FRAME: Final = 64 * 1024

Buffer = bytes | bytearray | memoryview


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

FRAG_FIRST: Final = 0x01
FRAG_LAST: Final = 0x02
FRAG_HEAD: Final = struct.Struct(">IB")  # stream id, flags
FRAG_FIRST_HEAD: Final = struct.Struct(">BI")  # inner type, total length (only on the first fragment)

#: Payloads at least this large get a private anonymous memory map instead of a bytearray: the kernel
#: supplies zeroed pages lazily as data arrives (no up-front memset on the event loop), in transparent huge
#: pages where the OS offers them (512 times fewer page faults than 4 KiB pages: a 64 MiB tensor would
#: otherwise take 16,384 faults while it is received). A *shared* map would be shmem-backed and fault
#: three times slower.
MMAP_THRESHOLD: Final = 1 << 20
_MAP_FLAGS: Final = getattr(mmap, "MAP_PRIVATE", 0) | getattr(
    mmap, "MAP_ANONYMOUS", getattr(mmap, "MAP_ANON", 0)
)
_HUGEPAGE: Final = getattr(mmap, "MADV_HUGEPAGE", None)

_FRAG_PEEK: Final = HEADER_SIZE + FRAG_HEAD.size + FRAG_FIRST_HEAD.size

#: Most fragmented messages one connection may be reassembling at once.
MAX_STREAMS: Final = 64


def alloc(size: int) -> bytearray | memoryview:
    """A writable buffer of ``size`` bytes (see :data:`MMAP_THRESHOLD`)."""
    if size >= MMAP_THRESHOLD:
        m = mmap.mmap(-1, size, flags=_MAP_FLAGS) if _MAP_FLAGS else mmap.mmap(-1, size)
        if _HUGEPAGE is not None:
            try:
                m.madvise(_HUGEPAGE)
            except OSError:  # transparent huge pages disabled: 4 KiB pages then
                pass
        return memoryview(m)
    return bytearray(size)


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


@dataclass(slots=True)
class _Stream:
    type: FrameType
    buf: bytearray | memoryview
    got: int


class FrameParser:
    """Incremental, allocation-bounded frame parser (no I/O).

    Args:
        max_frame_size: largest payload (and largest reassembled message) accepted; checked before any
            buffer is allocated. In-progress reassembly is bounded by twice this in total.
        scratch_size: size of the buffer small frames are read into.
        handshake_limit: the limit during the handshake (``None``: ``max_frame_size`` from the start).
            Parsing then stops after the first READY frame, whatever follows it stays unparsed in the
            scratch buffer, and :meth:`unlock` (called once the handshake has accepted that READY) raises
            the limit to ``max_frame_size`` and parses on. A peer that has not finished the handshake,
            authentication included, cannot make the node buffer more than this and the scratch buffer.
    """

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        scratch_size: int = 256 * 1024,
        *,
        handshake_limit: int | None = None,
    ) -> None:
        self.max_frame_size = max_frame_size
        #: the limit in force: ``handshake_limit`` until :meth:`unlock`, then ``max_frame_size``
        self.limit = max_frame_size if handshake_limit is None else min(handshake_limit, max_frame_size)
        self._handshaking = handshake_limit is not None
        self._held = False  # a READY was parsed during the handshake: wait for unlock()
        self._scratch = bytearray(max(scratch_size, 4096))
        self._start = 0
        self._end = 0
        self._big_threshold = len(self._scratch) // 2
        # direct-read target: (buffer, next offset, end offset, what to do when full)
        self._target: bytearray | memoryview | None = None
        self._tpos = 0
        self._tend = 0
        self._tkind = 0  # 1: plain payload, 2: fragment data
        self._ttype = FrameType.PING
        self._tstream = 0
        self._tflags = 0
        self._streams: dict[int, _Stream] = {}
        self._buffered = 0
        self._failed: ProtocolError | None = None

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has been received but not all of it (for slow-sender deadlines)."""
        return self._target is not None or self._end > self._start

    @property
    def direct_remaining(self) -> int:
        """Bytes still to be read straight into a payload buffer before the next header (0 if none)."""
        return self._tend - self._tpos if self._target is not None else 0

    @property
    def in_message(self) -> bool:
        """True while a fragmented message is being reassembled."""
        return bool(self._streams)

    def buffer(self) -> memoryview:
        """Where the next bytes from the wire should be written (``sock.recv_into(parser.buffer())``)."""
        if self._target is not None:
            return memoryview(self._target)[self._tpos : self._tend]
        if self._end == len(self._scratch) or (self._start and self._start == self._end):
            self._compact()
        if self._streams and self._end - self._start < _FRAG_PEEK:
            # Mid-message, the next frame is most likely another fragment: read just its headers so
            # its data lands straight in the message buffer instead of being copied out of scratch.
            return memoryview(self._scratch)[self._end : self._start + _FRAG_PEEK]
        return memoryview(self._scratch)[self._end :]

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._scratch[:n] = self._scratch[self._start : self._end]
        self._start, self._end = 0, n

    def feed(self, data: Buffer) -> list[Frame]:
        """Parse ``data`` (copying it through :meth:`buffer`); for tests and fuzzing."""
        out: list[Frame] = []
        mv = memoryview(data).cast("B")
        while mv:
            buf = self.buffer()
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            mv = mv[n:]
            out.extend(self.advance(n))
        return out

    def advance(self, n: int) -> list[Frame]:
        """Account for ``n`` bytes written into :meth:`buffer`; return the frames now complete.

        Raises:
            ProtocolError: the stream broke a rule; the parser is unusable afterwards.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._advance(n)
        except ProtocolError as exc:
            self._failed = exc
            self._streams.clear()
            self._target = None
            raise

    def unlock(self) -> list[Frame]:
        """The handshake is over: lift the handshake limit and return the frames already received after
        the peer's READY (no-op without a handshake limit)."""
        self.limit = self.max_frame_size
        self._handshaking = self._held = False
        return self.advance(0)

    def _advance(self, n: int) -> list[Frame]:
        out: list[Frame] = []
        if self._target is not None:
            self._tpos += n
            if self._tpos == self._tend:
                self._finish_target(out)
        else:
            self._end += n
        self._parse_scratch(out)
        return out

    def _finish_target(self, out: list[Frame]) -> None:
        target = self._target
        assert target is not None
        self._target = None
        if self._tkind == 1:
            out.append(Frame(self._ttype, target))
        else:
            self._fragment_done(self._tstream, self._tflags, self._tend - self._tpos, out)

    def _parse_scratch(self, out: list[Frame]) -> None:
        sc = self._scratch
        while self._target is None and not self._held:
            avail = self._end - self._start
            if avail < HEADER_SIZE:
                if avail and bytes(sc[self._start : self._start + min(avail, 4)]) != MAGIC[: min(avail, 4)]:
                    self._bad_magic(bytes(sc[self._start : self._start + min(avail, 4)]))
                return
            magic, ftype, length = HEADER.unpack_from(sc, self._start)
            if magic != MAGIC:
                self._bad_magic(magic)
            if ftype not in FRAME_TYPES:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{ftype:02x}")
            if length > self.limit:
                before = " before the handshake finished" if self.limit < self.max_frame_size else ""
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"{FrameType(ftype).name} frame declares {length} bytes, limit is {self.limit}{before}",
                )
            ftype = FrameType(ftype)
            body = self._start + HEADER_SIZE
            if self._handshaking and ftype == FrameType.READY and avail - HEADER_SIZE >= length:
                out.append(Frame(ftype, sc[body : body + length]))
                self._start = body + length
                self._held = True  # nothing after the peer's READY is parsed before the handshake accepts it
                return
            if ftype == FrameType.FRAGMENT:
                if not self._parse_fragment_head(length, body, avail - HEADER_SIZE, out):
                    return
                continue
            if avail - HEADER_SIZE >= length:
                out.append(
                    Frame(ftype, sc[body : body + length])
                )  # a bytearray copy: relays patch it in place
                self._start = body + length
                continue
            if HEADER_SIZE + length <= self._big_threshold:
                if self._start + HEADER_SIZE + length > len(sc):
                    self._compact()
                return  # wait for the rest in the scratch buffer
            have = avail - HEADER_SIZE
            target = alloc(length)  # length was checked against the limit above
            target[:have] = sc[body : body + have]
            self._start = self._end = 0
            self._set_target(target, have, length, 1, ftype)

    def _bad_magic(self, got: bytes) -> None:
        if got[:3] == MAGIC[:3] and len(got) == 4:
            raise ProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"peer uses exo frame version {got[3]}, this node speaks version {MAGIC[3]}",
            )
        raise ProtocolError(ErrorCode.BAD_MAGIC, f"bad magic {got!r} (expected {MAGIC!r}): not an exo peer")

    def _set_target(
        self, target: bytearray | memoryview, pos: int, end: int, kind: int, ftype: FrameType
    ) -> None:
        self._target, self._tpos, self._tend, self._tkind, self._ttype = target, pos, end, kind, ftype

    def _parse_fragment_head(self, length: int, body: int, have: int, out: list[Frame]) -> bool:
        sc = self._scratch
        if length < FRAG_HEAD.size:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"FRAGMENT frame of {length} bytes is shorter than its header"
            )
        if have < FRAG_HEAD.size:
            return False
        stream_id, flags = FRAG_HEAD.unpack_from(sc, body)
        head = FRAG_HEAD.size
        if flags & ~(FRAG_FIRST | FRAG_LAST):
            raise ProtocolError(ErrorCode.MALFORMED, f"FRAGMENT: unknown flags 0x{flags:02x}")
        if flags & FRAG_FIRST:
            head += FRAG_FIRST_HEAD.size
            if length < head:
                raise ProtocolError(ErrorCode.MALFORMED, "first FRAGMENT is shorter than its header")
            if have < head:
                return False
            inner, total = FRAG_FIRST_HEAD.unpack_from(sc, body + FRAG_HEAD.size)
            self._open_stream(stream_id, inner, total)
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"FRAGMENT for stream {stream_id}, which was never opened"
            )
        data_len = length - head
        if stream.got + data_len > len(stream.buf):
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"FRAGMENT stream {stream_id} overruns its declared {len(stream.buf)} bytes",
            )
        start = body + head
        take = min(data_len, have - head)
        stream.buf[stream.got : stream.got + take] = sc[start : start + take]
        stream.got += take
        self._start = start + take
        if take == data_len:
            self._fragment_done(stream_id, flags, 0, out)
        else:
            self._tstream, self._tflags = stream_id, flags
            self._set_target(stream.buf, stream.got, stream.got + data_len - take, 2, stream.type)
            stream.got += data_len - take
            self._start = self._end = 0
        return True

    def _open_stream(self, stream_id: int, inner: int, total: int) -> None:
        if stream_id in self._streams:
            raise ProtocolError(ErrorCode.MALFORMED, f"FRAGMENT stream {stream_id} opened twice")
        if inner not in FRAME_TYPES or inner == FrameType.FRAGMENT:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TYPE, f"FRAGMENT carries unknown message type 0x{inner:02x}"
            )
        if total > self.limit:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"fragmented {FrameType(inner).name} declares {total} bytes, limit is {self.limit}",
            )
        if len(self._streams) >= MAX_STREAMS or self._buffered + total > 2 * self.max_frame_size:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"too many fragmented messages in flight ({len(self._streams)} streams, "
                f"{self._buffered + total} bytes)",
            )
        self._streams[stream_id] = _Stream(FrameType(inner), alloc(total), 0)
        self._buffered += total

    def _fragment_done(self, stream_id: int, flags: int, _unused: int, out: list[Frame]) -> None:
        stream = self._streams[stream_id]
        complete = stream.got == len(stream.buf)
        if bool(flags & FRAG_LAST) != complete:
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"FRAGMENT stream {stream_id}: LAST flag {'set' if flags & FRAG_LAST else 'missing'} "
                f"with {stream.got} of {len(stream.buf)} bytes received",
            )
        if complete:
            del self._streams[stream_id]
            self._buffered -= len(stream.buf)
            out.append(Frame(stream.type, stream.buf))
