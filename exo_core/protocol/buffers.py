"""The byte buffers of the wire: what a frame's payload may be, and where a received payload is written.

A received payload gets its own buffer, written in place by ``recv_into`` and handed on without a copy;
:func:`alloc` chooses how that memory is obtained so that a large tensor costs as few page faults as possible.
"""

from __future__ import annotations

import mmap
from typing import Final

#: what a payload may be handed over as (a received one is a ``bytearray`` or a ``memoryview`` of a map)
Buffer = bytes | bytearray | memoryview

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
