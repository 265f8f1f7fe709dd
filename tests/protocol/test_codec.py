"""Property-based round trips of every message type, and framing edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_core.protocol import (
    MESSAGE_CLASSES,
    AuthChallenge,
    AuthResponse,
    Envelope,
    Error,
    ErrorCode,
    Finish,
    FrameParser,
    FrameType,
    GoAway,
    Hello,
    NodeState,
    Ping,
    Pong,
    Progress,
    Prompt,
    ProtocolError,
    Ready,
    RequestContext,
    Stage,
    Tensor,
    TensorMessage,
    Token,
    Topology,
    decode,
    encode,
    encode_bytes,
    encode_frame,
    fragments,
)
from exo_core.protocol.tensor import DTYPES

from .wire_sampling import wire_sampling

s8 = st.text(max_size=20)
u8, u16, u32 = (st.integers(0, 2**n - 1) for n in (8, 16, 32))
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
f32 = st.floats(width=32, allow_nan=False)
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
caps = st.dictionaries(st.text(max_size=8), values, max_size=4)
sampling = st.builds(
    wire_sampling,
    st.floats(0.0, 65504.0, width=32),  # temperature: finite, >= 0
    st.floats(0.0, 1.0, width=32),  # top_p
    u32,
    st.none() | st.integers(-(2**63), 2**63 - 1),
    u32,
    u8,
    st.lists(i32, max_size=4).map(tuple),
    st.just(0.0) | finite32,
    st.just(0.0) | finite32,
    st.lists(st.tuples(st.integers(0, 2**31 - 1), finite32), max_size=4).map(tuple),
)
ctx = st.builds(
    RequestContext,
    s8,
    s8,
    s8,
    st.lists(st.builds(Stage, s8, u16, u16).filter(lambda s: s.first_layer <= s.last_layer), max_size=4).map(
        tuple
    ),
    sampling,
)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    name, size = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    n = int(np.prod(shape)) * size
    return Tensor(name, shape, draw(st.binary(min_size=n, max_size=n)), draw(st.sampled_from("<>")))


envelopes = st.builds(Envelope, s8, s8, st.integers(1, 2**32 - 1), st.just(False), st.booleans(), u8)
messages = st.one_of(
    st.builds(
        Hello,
        st.text(min_size=1, max_size=20),
        st.just(1),
        st.just(1),
        u64,
        u64,
        st.booleans(),
        st.booleans(),
        st.booleans(),
        s8,
        s8,
        caps,
    ),
    st.builds(AuthChallenge, st.binary(min_size=32, max_size=32)),
    st.builds(AuthResponse, st.binary(min_size=32, max_size=32)),
    st.just(Ready()),
    st.builds(GoAway, st.text(max_size=50)),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Error, u16, st.text(max_size=50), s8),
    st.builds(Prompt, ctx, st.lists(i32, max_size=20).map(tuple), u32),
    st.builds(TensorMessage, ctx, u32, u32, tensors()),
    st.builds(
        Token,
        ctx,
        u32,
        u32,
        i32,
        f32,
        st.lists(st.tuples(i32, f32), max_size=3).map(tuple),
        st.booleans(),
        s8,
    ),
    st.builds(Finish, s8, s8),
    st.tuples(s8, u32, u32).map(lambda t: Progress(t[0], min(t[1], t[2]), max(t[1], t[2]))),
    st.builds(
        Topology,
        st.lists(
            st.builds(NodeState, s8, u64, s8, caps, st.lists(s8, max_size=3).map(tuple)), max_size=3
        ).map(tuple),
    ),
)


def test_every_message_type_has_a_strategy() -> None:
    assert len(MESSAGE_CLASSES) == 14 and set(MESSAGE_CLASSES) == set(FrameType) - {FrameType.FRAGMENT}


@settings(max_examples=400, deadline=None)
@given(msg=messages, env=envelopes, chunk=st.integers(1, 64))
def test_round_trip(msg: object, env: Envelope, chunk: int) -> None:
    from exo_core.protocol.codec import CONNECTION_TYPES

    envelope = None if msg.TYPE in CONNECTION_TYPES else env  # type: ignore[attr-defined]
    data = encode_bytes(msg, envelope)  # type: ignore[arg-type]
    (frame,) = FrameParser().feed(data)
    assert decode(frame.type, frame.payload) == (envelope, msg)
    enc = encode(msg, envelope)  # type: ignore[arg-type]
    pieces = b"".join(
        b"".join(bytes(p) for p in parts) for parts in fragments(enc.type, enc.payload_parts(), 3, chunk)
    )
    parser = FrameParser()
    got = [f for i in range(0, len(pieces), 7) for f in parser.feed(pieces[i : i + 7])]  # byte-dribbled
    assert len(got) == 1 and decode(got[0].type, got[0].payload) == (envelope, msg)


def test_tensor_is_zero_copy_both_ways() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = Tensor.from_numpy(arr)
    enc = encode(TensorMessage(RequestContext("r", "o", "m", ()), 0, 0, t))
    assert enc.parts[1].obj is arr  # type: ignore[union-attr]  # the array's own buffer is sent
    payload = bytearray(enc.tobytes()[9:])
    _, msg = decode(FrameType.TENSOR, payload)
    view = msg.tensor.to_numpy()  # type: ignore[union-attr]
    np.testing.assert_array_equal(view, arr)
    payload[-4:] = b"\0\0\0\0"  # the decoded tensor is a view into the received buffer
    assert view[2, 3] == 0
    be = Tensor.from_numpy(arr.astype(">f4"))
    assert be.byteorder == ">" and np.array_equal(be.to_numpy(), arr)


def test_limits_checked_before_allocating() -> None:
    p = FrameParser(max_frame_size=1000)
    with pytest.raises(ProtocolError) as e:
        p.feed(b"EXO\x01\x21\x00\x00\x03\xe9")
    assert e.value.code == ErrorCode.FRAME_TOO_LARGE
    p = FrameParser(max_frame_size=1000)
    with pytest.raises(ProtocolError) as e:  # a fragment stream may not declare more either
        p.feed(b"EXO\x01\x06\x00\x00\x00\x0a" + b"\0\0\0\1\1" + b"\x21\x00\x00\x03\xe9")
    assert e.value.code == ErrorCode.FRAME_TOO_LARGE


def test_handshake_limit_holds_until_unlock() -> None:
    """Before the handshake ends, frames are capped at the handshake limit; parsing stops after the first
    READY, so the large frame right behind it waits for unlock() and is then parsed under the full limit."""
    p = FrameParser(max_frame_size=1 << 20, handshake_limit=100)
    with pytest.raises(ProtocolError, match="before the handshake finished") as e:
        p.feed(b"EXO\x01\x01\x00\x00\x00\x65")  # a 101-byte HELLO
    assert e.value.code == ErrorCode.FRAME_TOO_LARGE
    p = FrameParser(max_frame_size=1 << 20, handshake_limit=100)
    ping = encode_frame(FrameType.PING, bytes(200))
    frames = p.feed(encode_frame(FrameType.READY, b"") + ping)
    assert [f.type for f in frames] == [FrameType.READY]  # the PING after it is held, not refused
    assert [(f.type, len(f.payload)) for f in p.unlock()] == [(FrameType.PING, 200)]
    assert p.feed(encode_frame(FrameType.PING, bytes(5000)))[0].type == FrameType.PING


@pytest.mark.parametrize(
    ("payload", "ftype"),
    [
        (b"\x02\x08\0\0\0\0\0\0", FrameType.PING),  # wants_reply with corr 0
        (b"\x03\x08\0\0\0\1\0\0" + bytes(8), FrameType.PING),  # reply and wants_reply
        (b"\0\x08\0\0\0\0\0\0" + bytes(9), FrameType.PING),  # trailing byte
        (b"\0\x08\0\0\0\0\x01\xff\0" + bytes(8), FrameType.PING),  # invalid UTF-8
        (b"\0\x01\0\0\0\x09\0\0\0\0\0\0\0\0\0\0\x00\xff", FrameType.HELLO),  # count beyond payload
    ],
)
def test_malformed_payloads(payload: bytes, ftype: FrameType) -> None:
    with pytest.raises(ProtocolError):
        decode(ftype, payload)
