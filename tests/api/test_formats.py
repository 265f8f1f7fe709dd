"""Response bodies built from token events, where OpenAI's shape has a rule of its own."""

from __future__ import annotations

from exo_core.api.backend import TokenEvent
from exo_core.api.formats import CompletionLogprobs


def test_legacy_top_logprobs_always_hold_the_sampled_token() -> None:
    """OpenAI's legacy completions return the sampled token's logprob among the alternatives, so a dict may
    have ``logprobs + 1`` entries when a sampled token (temperature > 0) was not among the most likely."""
    sampled_outside = TokenEvent(7, " cat", logprob=-3.5, top_logprobs=[(" dog", -0.1), (" the", -0.9)])
    sampled_inside = TokenEvent(8, " sat", logprob=-0.2, top_logprobs=[(" sat", -0.2), (" ran", -2.0)])
    no_alternatives = TokenEvent(9, ".", logprob=-0.05)
    block = CompletionLogprobs(start_offset=5).block([sampled_outside, sampled_inside, no_alternatives])
    assert block["top_logprobs"] == [
        {" dog": -0.1, " the": -0.9, " cat": -3.5},
        {" sat": -0.2, " ran": -2.0},
        {},
    ]
    assert block["token_logprobs"] == [-3.5, -0.2, -0.05]
    assert block["text_offset"] == [5, 9, 13]
