"""Sampling: greedy, top-k, top-p, seeded determinism, logprobs."""

from __future__ import annotations

import numpy as np
import pytest

from exo_core.models.sampling import SamplingParams, make_rng, sample, token_logprob, top_logprobs

LOGITS = np.array([1.0, 3.0, 2.5, -1.0, 3.0, 0.0], dtype=np.float32)


def test_greedy_picks_the_first_maximum() -> None:
    assert sample(LOGITS, temperature=0.0) == 1
    assert sample(LOGITS, temperature=0.7, top_k=1, rng=make_rng(0)) == 1


def test_same_seed_same_tokens_different_seed_differs() -> None:
    def draw(seed: int) -> list[int]:
        rng = make_rng(seed)
        return [sample(LOGITS, temperature=1.5, rng=rng) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_and_top_p_restrict_the_support() -> None:
    rng = make_rng(1)
    seen_k = {sample(LOGITS, temperature=5.0, top_k=3, rng=rng) for _ in range(300)}
    assert seen_k == {1, 2, 4}
    seen_p = {sample(LOGITS, temperature=1.0, top_p=0.5, rng=rng) for _ in range(300)}
    assert seen_p <= {1, 4} and len(seen_p) == 2


def test_frequencies_follow_softmax() -> None:
    rng = make_rng(3)
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    counts = np.bincount([sample(logits, rng=rng) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.03)


def test_logprobs() -> None:
    lp = top_logprobs(LOGITS, 3)
    assert [i for i, _ in lp] == [1, 4, 2]
    probs = np.exp(LOGITS - LOGITS.max()) / np.exp(LOGITS - LOGITS.max()).sum()
    assert lp[0][1] == pytest.approx(float(np.log(probs[1])), abs=1e-5)
    assert token_logprob(LOGITS, 3) == pytest.approx(float(np.log(probs[3])), abs=1e-5)
    assert top_logprobs(LOGITS, 0) == []


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="rng"):
        sample(LOGITS, temperature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="empty"):
        sample(np.zeros(0, np.float32), temperature=0)


def test_negative_seeds_are_deterministic_as_their_twos_complement() -> None:
    """OpenAI clients may send any integer seed: -1 seeds like 2**64 - 1, and draws repeat."""
    draws = [make_rng(-1).random(4) for _ in range(2)]
    np.testing.assert_array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(draws[0], make_rng(2**64 - 1).random(4))
    assert not np.array_equal(draws[0], make_rng(1).random(4))
