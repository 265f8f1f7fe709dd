"""How to sample one request: the one :class:`SamplingParams`, from the HTTP API to the last stage of a plan.

The API builds it from a validated request (:mod:`exo_core.api.schemas`), the node sends it in every
request context (:class:`exo_core.protocol.inference.Sampling`, with what each plan run adds), and the
last stage samples with it (:mod:`exo_core.models.sampling`). A leaf module: it imports nothing of exo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """OpenAI's sampling settings of one request, checked when built.

    Attributes:
        max_tokens: most tokens to generate; ``None``: until the end of sequence or of the model's context.
        temperature: 0 means greedy.
        top_p: nucleus sampling mass in [0, 1] (1 disables it; 0 keeps the most likely token).
        top_k: keep only the k most likely tokens (0 disables it).
        seed: seed of the request's own random generator (``None``: random).
        logprobs: report the log-probability of each sampled token (the last stage computes none otherwise).
        top_logprobs: how many most likely alternatives to report per token (0: none; needs ``logprobs``).
        presence_penalty / frequency_penalty: OpenAI's, subtracted from the logits of tokens already
            generated (once, and once per occurrence).
        logit_bias: ``(token id, bias)`` pairs added to the logits before sampling (greedy included).
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.top_logprobs < 0 or (self.top_logprobs and not self.logprobs):
            raise ValueError(f"top_logprobs must be >= 0 and needs logprobs, got {self.top_logprobs}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        for token, bias in self.logit_bias:
            if token < 0 or not math.isfinite(bias):
                raise ValueError(f"logit_bias: bad entry (token {token}, bias {bias})")
