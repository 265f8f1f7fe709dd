"""Receiving frames: :class:`FrameParser`, a sans-I/O parser that reassembles ``FRAGMENT`` messages.

:class:`FrameParser` is fed from a socket without copies for large payloads: the caller reads into
:meth:`FrameParser.buffer` (``sock.recv_into``) and reports the byte count to :meth:`FrameParser.advance`,
which returns complete frames. Small frames are read many at a time into a scratch buffer; a large payload
gets its own buffer (:func:`~exo_core.protocol.buffers.alloc`), allocated only after its declared length
passed the limit check. ``FRAGMENT`` frames (:mod:`exo_core.protocol.fragment`) are reassembled straight
into one preallocated buffer per message. The frame format itself is :mod:`exo_core.protocol.header`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from exo_core.protocol import fragment, header
from exo_core.protocol.buffers import Buffer, alloc
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.fragment import FRAG_FIRST, FRAG_LAST, Fragmenter
from exo_core.protocol.header import FRAME_TYPES, HEADER_SIZE, MAGIC, Frame, FrameType

# Buffer, Frame and Fragmenter are defined elsewhere and listed here because the transport's connection
# modules (connection.py, writer.py) import them from here along with the parser and the handshake limit.
__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HANDSHAKE_MAX_FRAME",
    "MAX_STREAMS",
    "Buffer",
    "Fragmenter",
    "Frame",
    "FrameParser",
]

# The structs unpacked for every frame, bound by assignment rather than ``from ... import``: on a name bound
# by an import, CPython 3.11 compiles ``NAME.method(...)`` to an attribute load that builds a bound method
# per call instead of LOAD_METHOD (``HEADER.unpack_from`` measured 60 % slower that way).
HEADER: Final = header.HEADER
FRAG_HEAD: Final = fragment.FRAG_HEAD
FRAG_FIRST_HEAD: Final = fragment.FRAG_FIRST_HEAD

DEFAULT_MAX_FRAME_SIZE: Final = 256 * 1024 * 1024
#: largest frame a peer may send before its READY has been accepted: HELLO and the authentication frames
#: are a few hundred bytes, so a peer that has not authenticated cannot make the node buffer more
HANDSHAKE_MAX_FRAME: Final = 64 * 1024

_FRAG_PEEK: Final = HEADER_SIZE + FRAG_HEAD.size + FRAG_FIRST_HEAD.size

#: Most fragmented messages one connection may be reassembling at once.
MAX_STREAMS: Final = 64


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
