"""The fast paths of the codec: cached request contexts, multi-field reads, fragments sized one at a time."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from exo_core.protocol import (
    Envelope,
    Fragmenter,
    FrameParser,
    FrameType,
    ProtocolError,
    RequestContext,
    Stage,
    Tensor,
    TensorMessage,
    decode,
    encode,
)
from exo_core.protocol.buffers import alloc

from .wire_sampling import wire_sampling

PLAN = (Stage("a", 0, 14), Stage("b", 15, 29))


def _payload(ctx: RequestContext) -> bytearray:
    msg = TensorMessage(ctx, 3, 7, Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3)))
    return bytearray(encode(msg, Envelope("a", "b", 9, wants_reply=True)).tobytes()[9:])


def test_repeated_context_decodes_to_the_same_value() -> None:
    ctx = RequestContext("r1", "a", "m", PLAN, wire_sampling(0.5, 0.75, 40, 7, 100, 2, (1, 2, 3)))
    first = decode(FrameType.TENSOR, _payload(ctx))[1]
    second = decode(FrameType.TENSOR, _payload(ctx))[1]
    assert isinstance(first, TensorMessage) and isinstance(second, TensorMessage)
    assert first.ctx == second.ctx == ctx
    assert (second.step, second.position) == (3, 7)


def test_contexts_differing_in_one_field_are_not_confused() -> None:
    base = RequestContext("r1", "a", "m", PLAN)
    variants = [
        base,
        RequestContext("r2", "a", "m", PLAN),
        RequestContext("r1", "a", "m", (Stage("a", 0, 13), Stage("b", 14, 29))),
        RequestContext("r1", "a", "m", PLAN, wire_sampling(max_tokens=5)),
        RequestContext("r1", "a", "m", PLAN, wire_sampling(stop_token_ids=(2,))),
    ]
    for _ in range(2):  # second pass: every context is cached
        for ctx in variants:
            msg = decode(FrameType.TENSOR, _payload(ctx))[1]
            assert isinstance(msg, TensorMessage) and msg.ctx == ctx


def test_cached_context_bytes_are_still_validated() -> None:
    ctx = RequestContext("r1", "a", "m", PLAN)
    good = _payload(ctx)
    decode(FrameType.TENSOR, good)  # now cached
    bad = bytearray(good)
    start = bad.index(b"\x02\x01a")  # plan: 2 stages, first node "a"
    bad[start + 3 : start + 7] = (20).to_bytes(2, "big") + (3).to_bytes(2, "big")  # first_layer > last_layer
    with pytest.raises(ProtocolError, match="first_layer 20 > last_layer 3"):
        decode(FrameType.TENSOR, bad)
    for cut in (20, 40, 60):
        with pytest.raises(ProtocolError):
            decode(FrameType.TENSOR, good[:cut])


def test_unhashable_context_still_encodes() -> None:
    ctx = RequestContext("r1", "a", "m", [Stage("a", 0, 1)])  # type: ignore[arg-type]
    msg = decode(FrameType.TENSOR, _payload(ctx))[1]
    assert isinstance(msg, TensorMessage) and msg.ctx.plan == (Stage("a", 0, 1),)


def test_fragments_of_varying_sizes_reassemble() -> None:
    data = np.random.default_rng(3).integers(0, 255, 300_001, dtype=np.uint8)
    cutter = Fragmenter(FrameType.TENSOR, [b"head", memoryview(data)], stream_id=5)
    parser = FrameParser()
    frames = []
    sizes = itertools.chain([4096, 70_000, 1, 200_000], itertools.repeat(10**9))
    while (parts := cutter.next(next(sizes))) is not None:
        frames += parser.feed(b"".join(bytes(p) for p in parts))
    assert len(frames) == 1 and frames[0].type == FrameType.TENSOR
    assert bytes(frames[0].payload) == b"head" + data.tobytes()
    assert cutter.next(100) is None


def test_large_buffers_are_private_and_writable() -> None:
    buf = alloc(4 << 20)
    buf[-1] = 7
    assert len(buf) == 4 << 20 and buf[-1] == 7 and buf[0] == 0
