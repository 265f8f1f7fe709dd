"""Sampling parameters on the wire: penalties and logit_bias behind their flag bits, old layouts intact."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from exo_core.protocol import (
    Envelope,
    ErrorCode,
    FrameType,
    Prompt,
    ProtocolError,
    RequestContext,
    Stage,
    Tensor,
    TensorMessage,
    decode,
    encode_bytes,
)
from exo_core.protocol.sampling import LOGIT_BIAS_SET, LOGPROBS_SET, PENALTIES_SET, SEED_SET, Sampling

from .wire_sampling import wire_sampling

PLAN = (Stage("a", 0, 14), Stage("b", 15, 29))
ENV = Envelope("a", "b", 9, wants_reply=True)
FLAGS_AT = 4 + 4 + 4  # temperature, top_p, top_k
CTX_HEAD = b"\x01r\x01o\x01m\x00"  # request id, origin, model id, empty plan: the sampling block follows


def _sampling_bytes(params: Sampling) -> bytes:
    """The encoded sampling block alone (what follows the plan in a context)."""
    full = encode_bytes(Prompt(RequestContext("r", "o", "m", (), params), ()), ENV)
    start = full.index(CTX_HEAD) + len(CTX_HEAD)
    return full[start : len(full) - 8]  # then u32 position and u32 token count


def test_params_without_the_new_fields_encode_as_before() -> None:
    """The 28-byte layout older nodes read, flags 0x01 at most: such contexts cross mixed clusters."""
    params = wire_sampling(0.5, 0.75, 40, 42, 128, 1, (2,))
    block = _sampling_bytes(params)
    assert block == struct.pack(">ffIBqIBH", 0.5, 0.75, 40, SEED_SET, 42, 128, 1, 1) + struct.pack(">i", 2)


def test_penalties_and_bias_follow_the_stop_ids_behind_their_flags() -> None:
    params = wire_sampling(
        stop_token_ids=(2,), presence_penalty=0.5, frequency_penalty=-1.5, logit_bias=((7, -100.0), (3, 2.5))
    )
    block = _sampling_bytes(params)
    assert block[FLAGS_AT] == PENALTIES_SET | LOGIT_BIAS_SET
    tail = block[28 + 4 :]
    assert tail == struct.pack(">ffH", 0.5, -1.5, 2) + struct.pack(">ifif", 7, -100.0, 3, 2.5)
    only_bias = _sampling_bytes(wire_sampling(logit_bias=((1, 1.0),)))
    assert only_bias[FLAGS_AT] == LOGIT_BIAS_SET and only_bias[28:] == struct.pack(">Hif", 1, 1, 1.0)
    only_penalty = _sampling_bytes(wire_sampling(frequency_penalty=2.0))
    assert only_penalty[FLAGS_AT] == PENALTIES_SET and only_penalty[28:] == struct.pack(">ff", 0.0, 2.0)


@pytest.mark.parametrize(
    "params",
    [
        wire_sampling(presence_penalty=1.0),
        wire_sampling(frequency_penalty=-2.0, seed=3),
        wire_sampling(logit_bias=((0, 100.0),)),
        wire_sampling(top_logprobs=3, presence_penalty=0.25, logit_bias=tuple((i, -1.0) for i in range(300))),
    ],
)
def test_round_trip_through_a_tensor_message(params: Sampling) -> None:
    """The context's end is found past the optional fields (the cached-context path), so the tensor after
    it decodes intact, the first time and from the cache."""
    ctx = RequestContext("r1", "a", "m", PLAN, params)
    msg = TensorMessage(ctx, 3, 7, Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3)))
    data = encode_bytes(msg, ENV)[9:]
    for _ in range(2):
        env, got = decode(FrameType.TENSOR, bytearray(data))
        assert env == ENV and isinstance(got, TensorMessage) and got.ctx == ctx
        np.testing.assert_array_equal(got.tensor.to_numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_contexts_differing_only_in_bias_or_penalty_are_not_confused() -> None:
    variants = [
        wire_sampling(),
        wire_sampling(logit_bias=((5, 1.0),)),
        wire_sampling(logit_bias=((5, 2.0),)),
        wire_sampling(logit_bias=((6, 1.0),)),
        wire_sampling(presence_penalty=1.0),
        wire_sampling(frequency_penalty=1.0),
    ]
    for _ in range(2):  # second pass: every context is cached
        for params in variants:
            ctx = RequestContext("r1", "a", "m", PLAN, params)
            msg = decode(FrameType.PROMPT, bytearray(encode_bytes(Prompt(ctx, (1, 2)), ENV)[9:]))[1]
            assert isinstance(msg, Prompt) and msg.ctx == ctx and msg.token_ids == (1, 2)


def _prompt_payload(params: Sampling) -> bytearray:
    return bytearray(encode_bytes(Prompt(RequestContext("r", "o", "m", (), params), (1,)), ENV)[9:])


@pytest.mark.parametrize(
    ("params", "patch", "match"),
    [
        (wire_sampling(), lambda b, at: b.__setitem__(at + FLAGS_AT, 0x20), "unknown flags 0x20"),
        (
            wire_sampling(logit_bias=((5, 1.0),)),
            lambda b, at: b.__setitem__(slice(at + 30, at + 34), struct.pack(">i", -1)),
            "logit_bias: bad entry",
        ),
        (
            wire_sampling(logit_bias=((5, 1.0),)),
            lambda b, at: b.__setitem__(slice(at + 34, at + 38), struct.pack(">f", float("inf"))),
            "logit_bias: bad entry",
        ),
        (
            wire_sampling(presence_penalty=1.0),
            lambda b, at: b.__setitem__(slice(at + 28, at + 32), struct.pack(">f", float("nan"))),
            "penalties must be finite",
        ),
        (
            wire_sampling(logit_bias=((5, 1.0),)),
            lambda b, at: b.__setitem__(slice(at + 28, at + 30), struct.pack(">H", 500)),
            "logit_bias",
        ),
    ],
    ids=["unknown flag", "negative token", "infinite bias", "nan penalty", "count beyond payload"],
)
def test_malformed_sampling_is_rejected(params: Sampling, patch: object, match: str) -> None:
    """Unknown flag bits are refused (how a node that predates a field treats a request using it), and so
    are entries no sender can mean."""
    payload = _prompt_payload(params)
    at = payload.index(CTX_HEAD) + len(CTX_HEAD)
    patch(payload, at)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=match) as e:
        decode(FrameType.PROMPT, payload)
    assert e.value.code == ErrorCode.MALFORMED


def test_too_many_bias_entries_cannot_be_encoded() -> None:
    ctx = RequestContext("r", "o", "m", (), wire_sampling(logit_bias=tuple((i, 0.0) for i in range(65536))))
    with pytest.raises(ValueError, match="at most 65535"):
        encode_bytes(Prompt(ctx, ()), ENV)


def test_the_logprobs_flag_is_set_only_when_top_logprobs_do_not_imply_it() -> None:
    """Flag 0x10 asks the last stage for the sampled token's logprob; top_logprobs > 0 implies it, so such
    contexts keep the encoding they had before the flag existed (older last stages read them)."""
    only = _sampling_bytes(wire_sampling(logprobs=True))
    assert only[FLAGS_AT] == LOGPROBS_SET and len(only) == 28
    assert _sampling_bytes(wire_sampling(top_logprobs=2))[FLAGS_AT] == 0
    assert _sampling_bytes(wire_sampling())[FLAGS_AT] == 0
    for sampling, wanted in (
        (wire_sampling(logprobs=True), True),
        (wire_sampling(top_logprobs=3), True),
        (wire_sampling(), False),
    ):
        ctx = RequestContext("r", "o", "m", PLAN, sampling)
        back = decode(FrameType.PROMPT, bytearray(encode_bytes(Prompt(ctx, (1,)), ENV)[9:]))[1]
        assert isinstance(back, Prompt) and back.ctx.sampling.params.logprobs is wanted
