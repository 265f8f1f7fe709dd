"""Primitive big-endian encoders/decoders shared by every message (``struct`` based, no I/O).

Layout rules (docs/protocol.md §Primitives): integers and floats are big-endian; ``str8``/``str16`` are UTF-8
bytes after a ``u8``/``u16`` length; a *value* is a tagged, self-describing tree (none, bool, int, float, str,
bytes, list, map) used for capabilities and topology, bounded in depth and never larger than its buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from exo_core.protocol.errors import ErrorCode, ProtocolError

U8: Final = struct.Struct(">B")
U16: Final = struct.Struct(">H")
U32: Final = struct.Struct(">I")
U64: Final = struct.Struct(">Q")
I32: Final = struct.Struct(">i")
I64: Final = struct.Struct(">q")
F32: Final = struct.Struct(">f")
F64: Final = struct.Struct(">d")

#: Deepest nesting a tagged value may have (lists and maps).
MAX_VALUE_DEPTH: Final = 16

TAG_NONE, TAG_FALSE, TAG_TRUE, TAG_INT, TAG_FLOAT, TAG_STR, TAG_BYTES, TAG_LIST, TAG_MAP = range(9)

#: A tagged value: what capabilities and topology entries are made of.
Value = None | bool | int | float | str | bytes | list["Value"] | dict[str, "Value"]


class Writer:
    """Accumulates the encoded bytes of one message header."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, v: int) -> None:
        self._buf += U8.pack(v)

    def u16(self, v: int) -> None:
        self._buf += U16.pack(v)

    def u32(self, v: int) -> None:
        self._buf += U32.pack(v)

    def u64(self, v: int) -> None:
        self._buf += U64.pack(v)

    def i32(self, v: int) -> None:
        self._buf += I32.pack(v)

    def i64(self, v: int) -> None:
        self._buf += I64.pack(v)

    def f32(self, v: float) -> None:
        self._buf += F32.pack(v)

    def f64(self, v: float) -> None:
        self._buf += F64.pack(v)

    def raw(self, b: bytes | bytearray | memoryview) -> None:
        self._buf += b

    def pack(self, st: struct.Struct, *values: Any) -> None:
        """Append several fixed-size fields at once (one ``struct`` call: the hot messages use this)."""
        self._buf += st.pack(*values)

    def str8(self, s: str) -> None:
        data = s.encode("utf-8")
        if len(data) > 0xFF:
            raise ValueError(f"string too long for str8 ({len(data)} bytes > 255): {s[:40]!r}...")
        buf = self._buf
        buf.append(len(data))
        buf += data

    def str16(self, s: str) -> None:
        data = s.encode("utf-8")
        if len(data) > 0xFFFF:
            raise ValueError(f"string too long for str16 ({len(data)} bytes > 65535)")
        self._buf += U16.pack(len(data)) + data

    def value(self, v: Any, depth: int = 0) -> None:
        """Encode a tagged value (see :data:`Value`)."""
        if depth > MAX_VALUE_DEPTH:
            raise ValueError(f"value nested deeper than {MAX_VALUE_DEPTH}")
        buf = self._buf
        if v is None:
            buf.append(TAG_NONE)
        elif v is True:
            buf.append(TAG_TRUE)
        elif v is False:
            buf.append(TAG_FALSE)
        elif isinstance(v, int):
            buf.append(TAG_INT)
            self.i64(v)
        elif isinstance(v, float):
            buf.append(TAG_FLOAT)
            self.f64(v)
        elif isinstance(v, str):
            data = v.encode("utf-8")
            buf.append(TAG_STR)
            self.u32(len(data))
            buf += data
        elif isinstance(v, bytes | bytearray | memoryview):
            buf.append(TAG_BYTES)
            self.u32(len(v))
            buf += v
        elif isinstance(v, Mapping):
            buf.append(TAG_MAP)
            self.u32(len(v))
            for key, item in v.items():
                if not isinstance(key, str):
                    raise TypeError(f"map keys must be str, got {type(key).__name__}")
                data = key.encode("utf-8")
                self.u32(len(data))
                buf += data
                self.value(item, depth + 1)
        elif isinstance(v, Sequence):
            buf.append(TAG_LIST)
            self.u32(len(v))
            for item in v:
                self.value(item, depth + 1)
        else:
            raise TypeError(f"cannot encode {type(v).__name__} as a protocol value")

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def buffer(self) -> bytearray:
        """The bytes written so far, not copied (the writer must not be used afterwards)."""
        return self._buf

    def __len__(self) -> int:
        return len(self._buf)


class Reader:
    """Reads primitives from a payload; every read past the end raises :class:`ProtocolError`."""

    __slots__ = ("_end", "_mv", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        mv = memoryview(data)
        self._mv = mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")
        self._end = len(self._mv)
        self.pos = pos

    @property
    def view(self) -> memoryview:
        """The whole payload (bytes, read-only use), for look-ahead without moving :attr:`pos`."""
        return self._mv

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > self._end:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"{what}: needs {n} bytes at offset {self.pos}, payload has {self._end}"
            )
        start = self.pos
        self.pos += n
        return self._mv[start : self.pos]

    def _unpack(self, st: struct.Struct, what: str) -> Any:
        if self.pos + st.size > self._end:
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"{what}: needs {st.size} bytes at offset {self.pos}, payload has {self._end}",
            )
        (v,) = st.unpack_from(self._mv, self.pos)
        self.pos += st.size
        return v

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        """Read several fixed-size fields at once (one bounds check, one ``struct`` call)."""
        pos = self.pos
        if pos + st.size > self._end:
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"{what}: needs {st.size} bytes at offset {pos}, payload has {self._end}",
            )
        self.pos = pos + st.size
        return st.unpack_from(self._mv, pos)

    def u8(self, what: str = "u8") -> int:
        return int(self._unpack(U8, what))

    def u16(self, what: str = "u16") -> int:
        return int(self._unpack(U16, what))

    def u32(self, what: str = "u32") -> int:
        return int(self._unpack(U32, what))

    def u64(self, what: str = "u64") -> int:
        return int(self._unpack(U64, what))

    def i32(self, what: str = "i32") -> int:
        return int(self._unpack(I32, what))

    def i64(self, what: str = "i64") -> int:
        return int(self._unpack(I64, what))

    def f32(self, what: str = "f32") -> float:
        return float(self._unpack(F32, what))

    def f64(self, what: str = "f64") -> float:
        return float(self._unpack(F64, what))

    def raw(self, n: int, what: str = "bytes") -> memoryview:
        return self._take(n, what)

    def rest(self) -> memoryview:
        return self._take(self.remaining, "rest")

    def _utf8(self, mv: memoryview, what: str) -> str:
        try:
            return str(mv, "utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(ErrorCode.MALFORMED, f"{what}: invalid UTF-8 ({exc.reason})") from None

    def str8(self, what: str = "str8") -> str:
        pos, mv = self.pos, self._mv
        if pos >= self._end:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"{what}: needs 1 bytes at offset {pos}, payload has {self._end}"
            )
        end = pos + 1 + mv[pos]
        if end > self._end:
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"{what}: needs {mv[pos]} bytes at offset {pos + 1}, payload has {self._end}",
            )
        self.pos = end
        try:
            return str(mv[pos + 1 : end], "utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(ErrorCode.MALFORMED, f"{what}: invalid UTF-8 ({exc.reason})") from None

    def str16(self, what: str = "str16") -> str:
        return self._utf8(self._take(self.u16(what), what), what)

    def count(self, n: int, min_item_size: int, what: str) -> int:
        """Check a declared item count against the bytes left before anything is allocated for it."""
        if n * min_item_size > self.remaining:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"{what}: {n} items cannot fit in the {self.remaining} bytes left"
            )
        return n

    def value(self, depth: int = 0, what: str = "value") -> Value:
        """Decode a tagged value."""
        if depth > MAX_VALUE_DEPTH:
            raise ProtocolError(ErrorCode.MALFORMED, f"{what}: nested deeper than {MAX_VALUE_DEPTH}")
        tag = self.u8(what)
        if tag == TAG_NONE:
            return None
        if tag == TAG_FALSE:
            return False
        if tag == TAG_TRUE:
            return True
        if tag == TAG_INT:
            return self.i64(what)
        if tag == TAG_FLOAT:
            return self.f64(what)
        if tag == TAG_STR:
            return self._utf8(self._take(self.u32(what), what), what)
        if tag == TAG_BYTES:
            return bytes(self._take(self.u32(what), what))
        if tag == TAG_LIST:
            n = self.count(self.u32(what), 1, what)
            return [self.value(depth + 1, what) for _ in range(n)]
        if tag == TAG_MAP:
            n = self.count(self.u32(what), 5, what)
            out: dict[str, Value] = {}
            for _ in range(n):
                key = self._utf8(self._take(self.u32(what), what), what)
                out[key] = self.value(depth + 1, what)
            return out
        raise ProtocolError(ErrorCode.MALFORMED, f"{what}: unknown value tag {tag}")

    def end(self, what: str) -> None:
        """Assert the payload is fully consumed (trailing bytes are malformed)."""
        if self.pos != self._end:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"{what}: {self._end - self.pos} unexpected trailing bytes"
            )
