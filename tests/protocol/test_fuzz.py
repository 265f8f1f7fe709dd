"""≥ 100,000 random and mutated frames: only ProtocolError, never an allocation beyond the limit."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np

from exo_core.protocol import FrameParser, ProtocolError, decode, encode_bytes

from .vectors import VECTORS, extra_vectors

LIMIT = 64 * 1024


def mutated_frames(n: int, seed: int) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    seeds = [encode_bytes(m, e) for m, e in VECTORS.values()] + [extra_vectors()["fragmented_ping"]]
    for i in range(n):
        data = bytearray(seeds[i % len(seeds)])
        kind = i % 4
        if kind == 0:  # flip random bytes
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
                data[pos] = int(rng.integers(0, 256))
        elif kind == 1:  # truncate, then append junk
            data = data[: int(rng.integers(0, len(data) + 1))] + rng.bytes(int(rng.integers(0, 8)))
        elif kind == 2:  # random length field
            data[5:9] = rng.bytes(4)
        else:  # random bytes after a valid magic
            data = data[:4] + rng.bytes(int(rng.integers(1, 64)))
        yield bytes(data)


def parse(data: bytes) -> bool:
    parser = FrameParser(max_frame_size=LIMIT, scratch_size=4096)
    try:
        for frame in parser.feed(data):
            decode(frame.type, frame.payload)
    except ProtocolError:
        return False
    return True


def test_fuzz_only_protocol_errors() -> None:
    results = [parse(data) for data in mutated_frames(100_000, 1234)]
    assert len(results) == 100_000
    assert 1_000 < sum(results) < 90_000  # both outcomes are well exercised


def test_fuzz_allocation_bounded_by_the_limit() -> None:
    frames = list(mutated_frames(5_000, 99))
    tracemalloc.start()
    try:
        worst = 0
        for data in frames:
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            parse(data)
            _, peak = tracemalloc.get_traced_memory()
            worst = max(worst, peak - before)
    finally:
        tracemalloc.stop()
    assert worst < 2 * LIMIT + 64 * 1024, f"one frame allocated {worst} bytes"
