"""Building a context's sampling block from the flat fields it has on the wire (docs/protocol.md §3)."""

from __future__ import annotations

from exo_core.params import SamplingParams
from exo_core.protocol import Sampling


def wire_sampling(
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    max_tokens: int = 256,
    top_logprobs: int = 0,
    stop_token_ids: tuple[int, ...] = (),
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: tuple[tuple[int, float], ...] = (),
    resumed: tuple[int, ...] = (),
    logprobs: bool = False,
) -> Sampling:
    """The wire block with these fields, in their wire order (``logprobs`` last: it is the newest flag)."""
    params = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        logprobs=logprobs or top_logprobs > 0,
        top_logprobs=top_logprobs,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        logit_bias=logit_bias,
    )
    return Sampling(params, max_tokens, stop_token_ids, resumed)
