"""Sampling from logits: temperature (0 = greedy), top-k, top-p, seeded and deterministic, plus logprobs.

Randomness comes only from the ``numpy.random.Generator`` passed in; :func:`make_rng` builds one from a
seed (PCG64), so a request with the same seed, prompt and model yields the same tokens.

OpenAI's ``logit_bias``, ``presence_penalty`` and ``frequency_penalty`` are applied by
:func:`adjust_logits` to the model's logits before anything else (temperature, top-k, top-p, greedy
arg-max); the stage runner reports logprobs of the adjusted logits (see :func:`adjust_logits`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def make_rng(seed: int | None) -> np.random.Generator:
    """A generator for one request: deterministic for a given ``seed``, fresh entropy when ``None``.

    Negative seeds (OpenAI's API allows any integer; the wire carries signed 64 bits) are taken modulo
    ``2**64``, as their two's complement, since NumPy's seeding takes non-negative integers only.
    """
    return np.random.Generator(np.random.PCG64(None if seed is None else seed % 2**64))


def adjust_logits(
    logits: np.ndarray,
    counts: Mapping[int, int] | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: Iterable[tuple[int, float]] = (),
) -> np.ndarray:
    """One row of logits with OpenAI's ``logit_bias`` and presence/frequency penalties applied.

    For every token ``j``, with ``c[j]`` the number of times ``j`` was sampled so far in this completion
    (generated tokens only, not the prompt)::

        logit[j] = logit[j] + bias[j] - (c[j] * frequency_penalty + (c[j] > 0) * presence_penalty)

    computed in float64. A bias of -100 effectively bans a token and +100 effectively forces it, for greedy
    decoding as well. The result is what :func:`sample` picks from and what logprobs are reported of (at
    temperature 1, before top-k/top-p), so a banned token also gets a very low logprob.

    Args:
        logits: shape ``(vocab,)`` (a ``(1, vocab)`` row is accepted).
        counts: token id -> times sampled so far in this completion.
        presence_penalty: subtracted once from every token sampled at least once.
        frequency_penalty: subtracted once per time a token was sampled.
        logit_bias: ``(token id, bias)`` pairs, added as they are (a repeated id gets the sum).

    Returns:
        ``logits`` itself when nothing applies, otherwise a new float64 row.

    Raises:
        ValueError: a token id in ``logit_bias`` or ``counts`` outside ``[0, vocab)``.
    """
    bias = list(logit_bias)
    penalize = bool(counts) and (presence_penalty != 0.0 or frequency_penalty != 0.0)
    if not bias and not penalize:
        return logits
    out = np.asarray(logits).reshape(-1).astype(np.float64)  # a copy: the engine's logits stay untouched
    if bias:
        ids = np.fromiter((t for t, _ in bias), dtype=np.int64, count=len(bias))
        _check_ids(ids, out.size, "logit_bias")
        np.add.at(out, ids, np.fromiter((b for _, b in bias), dtype=np.float64, count=len(bias)))
    if penalize:
        assert counts is not None
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        _check_ids(ids, out.size, "sampled")
        c = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        out[ids] -= c * frequency_penalty + (c > 0) * presence_penalty
    return out


def _check_ids(ids: np.ndarray, vocab: int, what: str) -> None:
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.size:
        raise ValueError(f"{what} token id {int(bad[0])} is out of range (the model has {vocab} logits)")


def draws_per_token(temperature: float, top_k: int) -> int:
    """How many values :func:`sample` takes from its generator per token: none when greedy, else one."""
    return 0 if temperature == 0.0 or top_k == 1 else 1


def skip_tokens(rng: np.random.Generator, tokens: int, temperature: float, top_k: int) -> None:
    """Move ``rng`` past the draws of ``tokens`` calls of :func:`sample`, as if it had sampled them
    (a request resumed on a new plan continues the random sequence where the lost plan left it)."""
    n = tokens * draws_per_token(temperature, top_k)
    if n:
        rng.random(n)


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
