"""Tensor payloads: ``u8 dtype | u8 byte order | u8 ndim | u32[ndim] shape`` followed by the raw bytes.

The sender passes the array's own buffer on (a ``memoryview``, no copy); the receiver gets a view into the
buffer the frame was read into, and :meth:`Tensor.to_numpy` wraps it without copying.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from exo_core.protocol.binary import Reader, Writer
from exo_core.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    import numpy as np

#: dtype code -> (name, item size). ``bfloat16`` has no NumPy dtype; :meth:`Tensor.to_numpy` gives its raw
#: bits as ``uint16``.
DTYPES: Final[dict[int, tuple[str, int]]] = {
    1: ("float32", 4),
    2: ("float16", 2),
    3: ("bfloat16", 2),
    4: ("float64", 8),
    5: ("int8", 1),
    6: ("uint8", 1),
    7: ("int16", 2),
    8: ("uint16", 2),
    9: ("int32", 4),
    10: ("int64", 8),
    11: ("bool", 1),
}
DTYPE_CODES: Final[dict[str, int]] = {name: code for code, (name, _) in DTYPES.items()}
ITEMSIZE: Final[dict[str, int]] = {name: size for name, size in DTYPES.values()}
BYTE_ORDERS: Final[dict[int, str]] = {0: "<", 1: ">"}
MAX_NDIM: Final = 8
_HEAD: Final = struct.Struct(">BBB")  # dtype, byte order, ndim
_SHAPES: Final = tuple(struct.Struct(f">{n}I") for n in range(MAX_NDIM + 1))


@dataclass(frozen=True, eq=False, slots=True)
class Tensor:
    """A dense, C-contiguous array on the wire.

    Attributes:
        dtype: one of :data:`DTYPES`' names (``"float32"``, ...).
        shape: dimensions (at most 8).
        data: the raw bytes (``len == prod(shape) * itemsize``); a view, never copied by the codec.
        byteorder: ``"<"`` (little-endian) or ``">"``; what the data is in, not what the receiver wants.
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes | bytearray | memoryview
    byteorder: str = "<"

    @classmethod
    def from_numpy(cls, array: np.ndarray[Any, Any]) -> Tensor:
        """Wrap a NumPy array without copying it (a non-contiguous array is made contiguous once)."""
        import numpy as np

        if array.dtype.name not in DTYPE_CODES:
            raise ValueError(f"dtype {array.dtype} cannot be sent; supported: {', '.join(DTYPE_CODES)}")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        order = array.dtype.byteorder
        if order in ("=", "|"):
            order = "<" if sys.byteorder == "little" else ">"
        return cls(array.dtype.name, tuple(int(d) for d in array.shape), memoryview(array).cast("B"), order)  # type: ignore[arg-type]

    def to_numpy(self) -> np.ndarray[Any, Any]:
        """A NumPy view of the data (no copy; read-only if the buffer is)."""
        import numpy as np

        name = "uint16" if self.dtype == "bfloat16" else self.dtype
        dt = (
            np.dtype(name).newbyteorder("<" if self.byteorder == "<" else ">")
            if ITEMSIZE[self.dtype] > 1
            else np.dtype(name)
        )
        return np.frombuffer(self.data, dtype=dt).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the data in bytes."""
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tensor):
            return NotImplemented
        return (self.dtype, self.shape, self.byteorder) == (
            other.dtype,
            other.shape,
            other.byteorder,
        ) and bytes(self.data) == bytes(other.data)

    __hash__ = None  # type: ignore[assignment]


def write_tensor_header(w: Writer, t: Tensor) -> None:
    """Append the tensor's header; the caller sends ``t.data`` after it (scatter-gather)."""
    code = DTYPE_CODES.get(t.dtype)
    if code is None:
        raise ValueError(f"unknown tensor dtype {t.dtype!r}")
    if t.byteorder not in ("<", ">"):
        raise ValueError(f"tensor byte order must be '<' or '>', got {t.byteorder!r}")
    if len(t.shape) > MAX_NDIM:
        raise ValueError(f"tensor has {len(t.shape)} dimensions, at most {MAX_NDIM} are allowed")
    size = memoryview(t.data).nbytes
    if size != t.nbytes:
        raise ValueError(f"tensor data is {size} bytes, shape {t.shape} needs {t.nbytes}")
    w.pack(_HEAD, code, 0 if t.byteorder == "<" else 1, len(t.shape))
    w.pack(_SHAPES[len(t.shape)], *t.shape)


def read_tensor(r: Reader) -> Tensor:
    """Read a tensor that runs to the end of the payload (its data is a view into the payload)."""
    code, order, ndim = r.unpack(_HEAD, "tensor header")
    if code not in DTYPES:
        raise ProtocolError(ErrorCode.MALFORMED, f"tensor: unknown dtype code {code}")
    if order not in BYTE_ORDERS:
        raise ProtocolError(ErrorCode.MALFORMED, f"tensor: unknown byte order {order}")
    if ndim > MAX_NDIM:
        raise ProtocolError(ErrorCode.MALFORMED, f"tensor: {ndim} dimensions, at most {MAX_NDIM}")
    shape: tuple[int, ...] = r.unpack(_SHAPES[ndim], "tensor shape")
    name, size = DTYPES[code]
    nbytes = math.prod(shape) * size
    if nbytes != r.remaining:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f"tensor: shape {shape} of {name} needs {nbytes} bytes, payload has {r.remaining}",
        )
    return Tensor(name, shape, r.rest(), BYTE_ORDERS[order])
