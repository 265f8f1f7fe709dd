"""The sampling block of a request context: the request's :class:`~exo_core.params.SamplingParams` and what
one plan run adds (tokens still to generate, stop tokens, tokens resumed after a failover).

Layout (docs/protocol.md §3): ``f32 temperature, f32 top_p, u32 top_k, u8 flags, i64 seed, u32 max_tokens,
u8 top_logprobs, u16 n, i32[n] stop_token_ids``, then the optional fields of the flags that are set, in
flag order. Optional fields are written only when used, so a request that uses none of them encodes byte
for byte as before they existed; a decoder rejects flags it does not know.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Final

from exo_core.params import SamplingParams
from exo_core.protocol.binary import Reader, Writer
from exo_core.protocol.errors import ErrorCode, ProtocolError

#: sampling flags: a seed is set; penalties follow the stop ids; a logit bias follows; the ids of tokens
#: generated before a failover follow; the last stage is to report the sampled token's logprob (implied by
#: top_logprobs > 0, so set only without them: contexts from before the flag encode as they did)
SEED_SET: Final = 0x01
PENALTIES_SET: Final = 0x02
LOGIT_BIAS_SET: Final = 0x04
RESUMED_SET: Final = 0x08
LOGPROBS_SET: Final = 0x10
KNOWN_FLAGS: Final = SEED_SET | PENALTIES_SET | LOGIT_BIAS_SET | RESUMED_SET | LOGPROBS_SET
#: most ``logit_bias`` entries a context may carry (u16 count on the wire)
MAX_LOGIT_BIAS: Final = 0xFFFF
# Fixed-size runs of fields, each read and written with one struct call (the hot path of every message).
FIXED: Final = struct.Struct(">ffIBqIBH")  # temperature, top_p, top_k, flags, seed, max, top_logprobs, n
FLAGS_AT: Final = 12  # offset of the flags byte in FIXED
PENALTIES: Final = struct.Struct(">ff")  # presence_penalty, frequency_penalty
#: a greedy request's parameters: what a context carries when nobody said otherwise
GREEDY: Final = SamplingParams(temperature=0.0)


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the last node of a plan picks tokens for one run of a request.

    Attributes:
        params: the request's sampling parameters (``params.max_tokens`` is not sent: ``max_tokens`` is).
        max_tokens: tokens this run may still generate.
        stop_token_ids: the model's end-of-sequence tokens.
        resumed: after a failover, the tokens the request had generated before its plan lost a node: the
            prompt of the replay ends with them, and the last stage counts them for the penalties and moves
            the seeded generator past their draws, so the continued stream is the one the lost plan would
            have made.
    """

    params: SamplingParams = field(default_factory=lambda: GREEDY)
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    resumed: tuple[int, ...] = ()

    def write(self, w: Writer) -> None:
        p = self.params
        penalties = p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if len(p.logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias has {len(p.logit_bias)} entries, at most {MAX_LOGIT_BIAS}")
        flags = (
            (SEED_SET if p.seed is not None else 0)
            | (PENALTIES_SET if penalties else 0)
            | (LOGIT_BIAS_SET if p.logit_bias else 0)
            | (RESUMED_SET if self.resumed else 0)
            | (LOGPROBS_SET if p.logprobs and not p.top_logprobs else 0)  # top_logprobs > 0 implies it
        )
        w.pack(
            FIXED,
            p.temperature,
            p.top_p,
            p.top_k,
            flags,
            p.seed or 0,
            self.max_tokens,
            p.top_logprobs,
            len(self.stop_token_ids),
        )
        if self.stop_token_ids:
            w.raw(struct.pack(f">{len(self.stop_token_ids)}i", *self.stop_token_ids))
        if penalties:
            w.pack(PENALTIES, p.presence_penalty, p.frequency_penalty)
        if p.logit_bias:
            w.u16(len(p.logit_bias))
            flat = (x for pair in p.logit_bias for x in pair)
            w.raw(struct.pack(f">{'if' * len(p.logit_bias)}", *flat))
        if self.resumed:
            w.u32(len(self.resumed))
            w.raw(struct.pack(f">{len(self.resumed)}i", *self.resumed))

    @classmethod
    def read(cls, r: Reader) -> Sampling:
        temperature, top_p, top_k, flags, seed, max_tokens, top_logprobs, n = r.unpack(FIXED, "sampling")
        if flags & ~KNOWN_FLAGS:
            raise ProtocolError(ErrorCode.MALFORMED, f"sampling: unknown flags 0x{flags:02x}")
        stops: tuple[int, ...] = ()
        if n:
            r.count(n, 4, "stop_token_ids")
            stops = r.unpack(struct.Struct(f">{n}i"), "stop_token_ids")
        presence = frequency = 0.0
        if flags & PENALTIES_SET:
            presence, frequency = r.unpack(PENALTIES, "sampling penalties")
            if not (math.isfinite(presence) and math.isfinite(frequency)):
                raise ProtocolError(ErrorCode.MALFORMED, "sampling: penalties must be finite")
        bias: tuple[tuple[int, float], ...] = ()
        if flags & LOGIT_BIAS_SET:
            m = r.count(r.u16("logit_bias count"), 8, "logit_bias")
            flat = r.unpack(struct.Struct(f">{'if' * m}"), "logit_bias")
            bias = tuple(zip(flat[0::2], flat[1::2], strict=True))
        resumed: tuple[int, ...] = ()
        if flags & RESUMED_SET:
            k = r.count(r.u32("resumed count"), 4, "resumed")
            resumed = r.unpack(struct.Struct(f">{k}i"), "resumed")
            if any(t < 0 for t in resumed):
                raise ProtocolError(ErrorCode.MALFORMED, "resumed: negative token id")
        try:
            params = SamplingParams(
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed if flags & SEED_SET else None,
                logprobs=bool(flags & LOGPROBS_SET) or top_logprobs > 0,
                top_logprobs=top_logprobs,
                presence_penalty=presence,
                frequency_penalty=frequency,
                logit_bias=bias,
            )
        except ValueError as exc:
            raise ProtocolError(ErrorCode.MALFORMED, f"sampling: {exc}") from None
        return cls(params, max_tokens, stops, resumed)


def skip(mv: memoryview, pos: int) -> int:
    """Offset just past the sampling block at ``pos`` (may lie past the end of ``mv``).

    Raises:
        IndexError: the block's fixed part runs past the end.
    """
    pos += FIXED.size
    if pos > len(mv):
        raise IndexError(pos)
    flags = mv[pos - FIXED.size + FLAGS_AT]
    pos += 4 * ((mv[pos - 2] << 8) | mv[pos - 1])  # stop_token_ids
    if flags & PENALTIES_SET:
        pos += PENALTIES.size
    if flags & LOGIT_BIAS_SET:
        pos += 2 + 8 * ((mv[pos] << 8) | mv[pos + 1])
    if flags & RESUMED_SET:
        pos += 4 + 4 * int.from_bytes(mv[pos : pos + 4], "big")
    return pos
