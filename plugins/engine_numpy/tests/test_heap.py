"""The heap measurement behind ``memory().weights`` on the quantized path."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from exo_engine_numpy.heap import HeapGrowth, heap_in_use

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or heap_in_use() is None, reason="needs glibc's mallinfo2"
)


@glibc
def test_growth_counts_what_the_block_keeps_not_what_it_drops() -> None:
    kept: list[np.ndarray] = []
    with HeapGrowth() as grown:
        kept.append(np.ones(8 << 20, np.uint8))  # 8 MiB kept
        dropped = np.ones(16 << 20, np.uint8)  # 16 MiB freed before the block ends
        del dropped
    assert grown.bytes is not None
    assert 8 << 20 <= grown.bytes < 9 << 20


@glibc
def test_measured_blocks_run_one_at_a_time() -> None:
    """A second load waits for the first, so neither counts the other's allocations."""
    order: list[str] = []

    def other() -> None:
        with HeapGrowth():
            order.append("other")

    with HeapGrowth():
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.05)
        order.append("first")
    t.join(timeout=5)
    assert order == ["first", "other"]


def test_growth_is_none_where_the_heap_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import exo_engine_numpy.heap as heap

    monkeypatch.setattr(heap, "_MALLINFO2", None)
    assert heap.heap_in_use() is None
    with HeapGrowth() as grown:
        pass
    assert grown.bytes is None
