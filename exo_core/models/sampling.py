"""Sampling from logits: temperature (0 = greedy), top-k, top-p, seeded and deterministic, plus logprobs.

Randomness comes only from the ``numpy.random.Generator`` passed in; :func:`make_rng` builds one from a
seed (PCG64), so a request with the same seed, prompt and model yields the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI-style names)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


def make_rng(seed: int | None) -> np.random.Generator:
    """A generator for one request: deterministic for a given ``seed``, fresh entropy when ``None``.

    Negative seeds (OpenAI's API allows any integer; the wire carries signed 64 bits) are taken modulo
    ``2**64``, as their two's complement, since NumPy's seeding takes non-negative integers only.
    """
    return np.random.Generator(np.random.PCG64(None if seed is None else seed % 2**64))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, computed in float64, returned as float32."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out.astype(np.float32)


def sample(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    rng: np.random.Generator | None = None,
) -> int:
    """Pick the next token id from one row of logits.

    Args:
        logits: shape ``(vocab,)`` (a ``(1, vocab)`` row is accepted).
        temperature: 0 picks the arg-max (ties: lowest id); higher flattens the distribution.
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``.
        top_k: keep only the ``top_k`` most likely tokens (0 = all).
        rng: source of randomness; required unless greedy.
    """
    row = np.asarray(logits).reshape(-1)
    if row.size == 0:
        raise ValueError("cannot sample from empty logits")
    if temperature == 0.0 or top_k == 1:
        return int(np.argmax(row))
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs an rng (see make_rng)")
    x = row.astype(np.float64) / float(temperature)
    if 0 < top_k < x.size:
        idx = np.argpartition(-x, top_k - 1)[:top_k]
    else:
        idx = np.arange(x.size)
    # most likely first; stable so equal logits keep id order (determinism across runs)
    idx = idx[np.argsort(-x[idx], kind="stable")]
    vals = x[idx]
    probs = np.exp(vals - vals[0])
    probs /= probs.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        probs = probs[:keep] / probs[:keep].sum()
        idx = idx[:keep]
    return int(idx[rng.choice(probs.size, p=probs)])


def token_logprob(logits: np.ndarray, token_id: int) -> float:
    """The log-probability of ``token_id`` under ``softmax(logits)`` (temperature 1)."""
    return float(log_softmax(np.asarray(logits).reshape(-1))[token_id])


def top_logprobs(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely ids with their log-probabilities, most likely first."""
    lp = log_softmax(np.asarray(logits).reshape(-1))
    k = max(0, min(k, lp.size))
    if k == 0:
        return []
    idx = np.argpartition(-lp, k - 1)[:k]
    idx = idx[np.argsort(-lp[idx], kind="stable")]
    return [(int(i), float(lp[i])) for i in idx]
