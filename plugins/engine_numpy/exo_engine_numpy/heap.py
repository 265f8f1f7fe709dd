"""The C heap's growth over a block of code: what onnxruntime keeps of a shard's weights.

onnxruntime copies the weights a graph is given and packs the quantized ones into its kernels' own layout
(a float32 scale and a float32 block sum beside every block of codes, and it keeps the unpacked scales:
~0.95 bytes per 4-bit weight where the arrays handed to it hold 0.625, measured), none of which Python can
see. :class:`HeapGrowth` measures it as the growth of the bytes malloc has handed out (glibc's
``mallinfo2``: small blocks plus the large ones it maps), so ``memory().weights`` reports what the process
holds rather than what it handed over. Elsewhere (macOS, musl) it measures nothing and callers count the
arrays they handed over.

Measured blocks run one at a time in a process, so two shards loading at once do not count each other's
allocations; anything another thread allocates meanwhile (a request's KV cache growing) is counted too,
which makes the figure an upper bound by that much.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from types import TracebackType


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_mallinfo2() -> Callable[[], _MallInfo2] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.argtypes = []
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _load_mallinfo2()
_LOCK = threading.Lock()


def heap_in_use() -> int | None:
    """Bytes malloc has handed out and not taken back, or None where the C library cannot say."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


class HeapGrowth:
    """``with HeapGrowth() as grown: ...`` then ``grown.bytes``: how much the heap grew over the block
    (never below 0), or None when it cannot be measured here. One measured block at a time per process."""

    def __init__(self) -> None:
        self.bytes: int | None = None
        self._start: int | None = None

    def __enter__(self) -> HeapGrowth:
        _LOCK.acquire()
        self._start = heap_in_use()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            end = heap_in_use()
            if self._start is not None and end is not None:
                self.bytes = max(0, end - self._start)
        finally:
            _LOCK.release()
