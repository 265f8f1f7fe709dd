"""Sampling: greedy, top-k, top-p, seeded determinism, logprobs, logit_bias and penalties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exo_core.models.sampling import (
    adjust_logits,
    make_rng,
    sample,
    skip_tokens,
    token_logprob,
    top_logprobs,
)
from exo_core.params import SamplingParams

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
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=2)  # without logprobs
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias=((-1, 1.0),))
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


# ---- logit_bias, presence_penalty, frequency_penalty: against a reference written here ----------------


def reference_adjust(
    logits: list[float], counts: dict[int, int], presence: float, frequency: float, bias: dict[int, float]
) -> list[float]:
    """OpenAI's definition, one token at a time in plain Python floats."""
    out = []
    for j, logit in enumerate(logits):
        x = float(logit) + bias.get(j, 0.0)
        c = counts.get(j, 0)
        x -= c * frequency + (presence if c > 0 else 0.0)
        out.append(x)
    return out


def reference_argmax(values: list[float]) -> int:
    best = 0
    for j, v in enumerate(values):
        if v > values[best]:
            best = j
    return best


def reference_sample(values: list[float], temperature: float, rng: np.random.Generator) -> int:
    """Softmax at ``temperature`` over the tokens ordered most likely first (ties by id), one draw."""
    order = sorted(range(len(values)), key=lambda j: -values[j])
    scaled = [values[j] / temperature for j in order]
    weights = [math.exp(v - scaled[0]) for v in scaled]
    total = sum(weights)
    return order[int(rng.choice(len(order), p=[w / total for w in weights]))]


def test_adjustment_matches_the_reference() -> None:
    rng = np.random.default_rng(11)
    for _ in range(50):
        vocab = int(rng.integers(2, 12))
        logits = rng.normal(0, 3, vocab).astype(np.float32)
        counts = {int(t): int(rng.integers(1, 5)) for t in rng.choice(vocab, rng.integers(0, vocab + 1))}
        bias = {int(t): float(rng.uniform(-100, 100)) for t in rng.choice(vocab, rng.integers(0, vocab + 1))}
        presence, frequency = (float(v) for v in rng.uniform(-2, 2, 2))
        got = adjust_logits(logits, counts, presence, frequency, bias.items())
        want = reference_adjust([float(v) for v in logits], counts, presence, frequency, bias)
        assert got.tolist() == want  # the same float64 operations: equal to the last bit


def test_nothing_to_apply_returns_the_logits_untouched() -> None:
    assert adjust_logits(LOGITS) is LOGITS
    assert adjust_logits(LOGITS, {1: 3}) is LOGITS  # counts without penalties change nothing
    assert adjust_logits(LOGITS, {}, 1.0, 1.0) is LOGITS  # penalties without counts neither
    before = LOGITS.copy()
    adjust_logits(LOGITS, {1: 2}, 1.0, 1.0, [(0, 5.0)])
    np.testing.assert_array_equal(LOGITS, before)  # the engine's row is never modified


def test_greedy_follows_logit_bias() -> None:
    """Bias flips the arg-max: a moderate bias promotes a token, -100 bans the best one, +100 forces any."""
    plain = [float(v) for v in LOGITS]
    for bias in ({3: 4.5}, {1: -100.0}, {1: -100.0, 4: -100.0}, {5: 100.0}, {0: 1.5, 2: 0.75}):
        want = reference_argmax(reference_adjust(plain, {}, 0.0, 0.0, bias))
        got = sample(adjust_logits(LOGITS, None, 0.0, 0.0, bias.items()), temperature=0.0)
        assert got == want, bias
        assert got != reference_argmax(plain)  # every case changes the greedy choice
    assert sample(adjust_logits(LOGITS, None, 0, 0, [(3, 4.5)]), temperature=0.0) == 3


def test_greedy_repetition_loop_under_penalties_matches_the_reference() -> None:
    """A greedy loop over fixed logits: with penalties it walks through the vocabulary as the formula says."""
    for presence, frequency in ((0.0, 0.0), (0.0, 1.0), (1.5, 0.0), (0.5, 2.0), (-0.5, 0.25)):
        counts: dict[int, int] = {}
        ref_counts: dict[int, int] = {}
        got, want = [], []
        for _ in range(12):
            token = sample(adjust_logits(LOGITS, counts, presence, frequency), temperature=0.0)
            counts[token] = counts.get(token, 0) + 1
            got.append(token)
            ref = reference_argmax(
                reference_adjust([float(v) for v in LOGITS], ref_counts, presence, frequency, {})
            )
            ref_counts[ref] = ref_counts.get(ref, 0) + 1
            want.append(ref)
        assert got == want, (presence, frequency)
        if (presence, frequency) == (0.0, 0.0):
            assert set(got) == {1}  # the loop the penalties break
        elif presence >= 0 and frequency >= 0:
            assert len(set(got)) > 1


def test_seeded_sampling_matches_the_reference() -> None:
    """Same rng seed: the sampler and a reference that applies the formula and then draws agree token for
    token over a completion whose counts grow as it goes."""
    presence, frequency, bias = 0.75, 0.5, {0: 1.0, 5: -100.0}
    for temperature in (0.5, 1.0, 1.7):
        rng, ref_rng = make_rng(5), make_rng(5)
        counts: dict[int, int] = {}
        ref_counts: dict[int, int] = {}
        got, want = [], []
        for _ in range(60):
            token = sample(
                adjust_logits(LOGITS, counts, presence, frequency, bias.items()), temperature, rng=rng
            )
            counts[token] = counts.get(token, 0) + 1
            got.append(token)
            values = reference_adjust([float(v) for v in LOGITS], ref_counts, presence, frequency, bias)
            ref = reference_sample(values, temperature, ref_rng)
            ref_counts[ref] = ref_counts.get(ref, 0) + 1
            want.append(ref)
        assert got == want, temperature
        assert 5 not in got


def test_logprobs_of_adjusted_logits() -> None:
    """Reported logprobs are of the adjusted logits: a banned token's is far below everything else."""
    adjusted = adjust_logits(LOGITS, None, 0, 0, [(1, -100.0)])
    assert token_logprob(adjusted, 1) < -99
    assert [i for i, _ in top_logprobs(adjusted, 2)] == [4, 2]


def test_out_of_range_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="logit_bias token id 6 is out of range"):
        adjust_logits(LOGITS, None, 0, 0, [(6, 1.0)])
    with pytest.raises(ValueError, match="out of range"):
        adjust_logits(LOGITS, None, 0, 0, [(-1, 1.0)])
    with pytest.raises(ValueError, match="sampled token id 9"):
        adjust_logits(LOGITS, {9: 1}, 1.0, 0.0)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.8, 0, 0.95), (1.3, 5, 1.0), (0.5, 0, 0.5)])
def test_skip_tokens_continues_the_random_sequence_of_a_replay(
    temperature: float, top_k: int, top_p: float
) -> None:
    """A replay after a failover skips the draws of the tokens already sent and samples what the lost plan
    would have sampled next."""
    rows = np.random.default_rng(3).normal(size=(12, 50)).astype(np.float32) * 3
    whole = make_rng(1234)
    undisturbed = [sample(r, temperature, top_p, top_k, whole) for r in rows]
    for done in (0, 1, 7):
        replay = make_rng(1234)
        skip_tokens(replay, done, temperature, top_k)
        assert [sample(r, temperature, top_p, top_k, replay) for r in rows[done:]] == undisturbed[done:]


def test_skip_tokens_draws_nothing_when_greedy() -> None:
    rng = make_rng(5)
    skip_tokens(rng, 10, 0.0, 0)
    skip_tokens(rng, 10, 0.9, 1)  # top_k 1 is greedy too
    assert rng.random() == make_rng(5).random()
