"""A fast, memory-mapped GGUF parser.

``gguf.GGUFReader`` builds a Python object per element of every metadata array and spends seconds on the
49k-entry tokenizer arrays of a small model. This parser reads the header in one pass (numeric arrays become
NumPy views, string arrays lists of ``str``), memory-maps the file, and hands out raw tensor bytes that
``gguf.quants.dequantize`` turns into float32. Opened files are cached per (path, size, mtime), so a node pays
the parse once however many components ask for it.

An engine that has copied what it needs out of the file calls :meth:`GGUFFile.release_pages`: the pages it
read stay in the OS page cache, but no longer count in the process's resident memory (for the default model
~93 MB of a ~300 MB node after its quantized load).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exo_core.models.errors import ModelFormatError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> (struct format, numpy dtype)
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"),
    1: ("<b", "<i1"),
    2: ("<H", "<u2"),
    3: ("<h", "<i2"),
    4: ("<I", "<u4"),
    5: ("<i", "<i4"),
    6: ("<f", "<f4"),
    7: ("<?", "<u1"),
    10: ("<Q", "<u8"),
    11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
_STRING = 8
_ARRAY = 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lives in the file.

    Attributes:
        name: GGUF tensor name (``blk.0.attn_q.weight``).
        shape: NumPy shape (outermost first, i.e. GGUF dims reversed): ``(out_features, in_features)``.
        qtype: ``gguf.GGMLQuantizationType`` value.
        offset: absolute byte offset of the data in the file.
        nbytes: size of the stored (possibly quantized) data.
    """

    name: str
    shape: tuple[int, ...]
    qtype: int
    offset: int
    nbytes: int


class GGUFFile:
    """One parsed GGUF file: ``metadata`` (key -> value) and ``tensors`` (name -> info), memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot open GGUF file {path}: {exc}") from exc
        self._map = np.frombuffer(self._mmap, dtype=np.uint8)  # read-only, like the mapping
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, GGUFTensorInfo] = {}
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
            raise ModelFormatError(
                f"{path} is not a valid GGUF file (truncated or corrupt header: {exc})"
            ) from exc

    def _parse(self) -> None:
        buf = memoryview(self._map)  # type: ignore[arg-type]
        if bytes(buf[:4]) != GGUF_MAGIC:
            raise ModelFormatError(f"{self.path} is not a GGUF file (bad magic {bytes(buf[:4])!r})")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ModelFormatError(
                f"{self.path}: unsupported GGUF version {version} (supported: 2, 3; big-endian files are not)"
            )
        pos = 24
        for _ in range(n_kv):
            key, pos = _read_str(buf, pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            value, pos = self._read_value(buf, pos + 4, vtype)
            self.metadata[key] = value
        infos: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name, pos = _read_str(buf, pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            pos += 4 + 8 * n_dims
            qtype, offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            infos.append((name, tuple(int(d) for d in reversed(dims)), int(qtype), int(offset)))
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = (pos + alignment - 1) // alignment * alignment
        for name, shape, qtype, offset in infos:
            nbytes = _tensor_nbytes(shape, qtype)
            start = data_start + offset
            if start + nbytes > len(self._map):
                raise ModelFormatError(
                    f"{self.path}: tensor {name} extends past the end of the file (truncated?)"
                )
            self.tensors[name] = GGUFTensorInfo(name, shape, qtype, start, nbytes)

    def _read_value(self, buf: memoryview, pos: int, vtype: int) -> tuple[Any, int]:
        if vtype == _STRING:
            return _read_str(buf, pos)
        if vtype in _SCALARS:
            fmt, _ = _SCALARS[vtype]
            (value,) = struct.unpack_from(fmt, buf, pos)
            return value, pos + struct.calcsize(fmt)
        if vtype == _ARRAY:
            etype, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1])
                end = pos + count * dtype.itemsize
                arr = np.frombuffer(buf[pos:end], dtype=dtype)
                return (arr.astype(bool) if etype == 7 else arr), end
            if etype == _STRING:
                out: list[str] = []
                append = out.append
                for _ in range(count):
                    n = int.from_bytes(buf[pos : pos + 8], "little")
                    pos += 8
                    append(str(buf[pos : pos + n], "utf-8", errors="replace"))
                    pos += n
                return out, pos
            items = []
            for _ in range(count):
                item, pos = self._read_value(buf, pos, etype)
                items.append(item)
            return items, pos
        raise ModelFormatError(f"{self.path}: unknown GGUF metadata value type {vtype}")

    def release_pages(self) -> None:
        """Drop the file's pages from this process's resident set (``MADV_DONTNEED``; the data stays valid:
        a later read maps the pages in again from the page cache or the disk)."""
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is not None:
            with contextlib.suppress(OSError, ValueError):  # not supported here: the pages simply stay
                self._mmap.madvise(advice)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name`` as a read-only uint8 view shaped ``(..., bytes_per_row)``."""
        info = self.tensors[name]
        data = self._map[info.offset : info.offset + info.nbytes]
        return np.asarray(data).reshape(*info.shape[:-1], -1)

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to a new C-contiguous float32 array of shape ``info.shape``."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.tensors[name]
        try:
            qtype = GGMLQuantizationType(info.qtype)
        except ValueError:
            raise ModelFormatError(f"{self.path}: tensor {name} has unknown GGML type {info.qtype}") from None
        raw = self.raw(name)
        try:
            out = dequantize(raw, qtype)
        except NotImplementedError as exc:
            raise ModelFormatError(
                f"{self.path}: tensor {name}: GGML type {qtype.name} is not supported ({exc})"
            ) from exc
        out = np.ascontiguousarray(out, dtype=np.float32).reshape(info.shape)
        if out.base is not None or not out.flags.writeable:  # F32 comes back as a view of the memmap
            out = out.copy()
        return out


def _read_str(buf: memoryview, pos: int) -> tuple[str, int]:
    n = int.from_bytes(buf[pos : pos + 8], "little")
    end = pos + 8 + n
    if end > len(buf):
        raise ValueError("string runs past the end of the file")
    return str(buf[pos + 8 : end], "utf-8", errors="replace"), end


def _tensor_nbytes(shape: tuple[int, ...], qtype: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        raise ModelFormatError(f"unknown GGML tensor type {qtype}") from None
    n = 1
    for d in shape:
        n *= d
    if shape and shape[-1] % block:
        raise ModelFormatError(
            f"tensor row of {shape[-1]} values is not a multiple of the block size {block}"
        )
    return n // block * type_size


@functools.lru_cache(maxsize=8)
def _open_cached(path: str, size: int, mtime_ns: int) -> GGUFFile:
    log.debug("parsing GGUF %s (%d bytes)", path, size)
    return GGUFFile(Path(path))


def open_gguf(path: str | Path) -> GGUFFile:
    """Open (or reuse) the parsed GGUF at ``path``; re-parsed only when the file changes."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelFormatError(f"cannot open GGUF file {p}: {exc}") from exc
    return _open_cached(str(p), st.st_size, st.st_mtime_ns)
