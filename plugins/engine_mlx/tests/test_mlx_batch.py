"""Batched decode steps on MLX (``forward_batch``): each row as its lone step would give it, clean errors."""

from __future__ import annotations

import numpy as np
import pytest
from exo_engine_mlx.engine import MlxEngine
from exo_engine_mlx.weights import Representation

from exo_core.engine import BatchingEngine
from exo_core.models.source import ModelSource

PROMPTS = [[504, 3458, 282], [5], [99, 3, 42, 7, 8, 200], [11, 12]]


async def _pair(
    source: ModelSource, n_layers: int, first: int, last: int, rep: Representation = "dense"
) -> tuple[MlxEngine, MlxEngine]:
    """Two engines on the same layers; ``cache_step=4`` makes the caches grow during the test."""
    one, batched = (MlxEngine(representation=rep, cache_step=4) for _ in range(2))
    for e in (one, batched):
        await e.load(source, first, last, n_layers)
    return one, batched


@pytest.mark.parametrize("rep", ["dense", "quantized"])
async def test_a_batch_of_steps_matches_the_steps_one_by_one(
    source: ModelSource, n_layers: int, rep: Representation
) -> None:
    """Requests at different positions, caches growing past their size, whole model: the same logits up to
    float rounding (a product over several rows rounds differently from one row), the same greedy token."""
    one, batched = await _pair(source, n_layers, 0, n_layers - 1, rep)
    assert isinstance(batched, BatchingEngine)
    for i, prompt in enumerate(PROMPTS):
        for e in (one, batched):
            await e.forward(f"r{i}", np.array(prompt))
    for step in range(5):
        tokens = [(7919 * step + 331 * i) % 49152 for i in range(len(PROMPTS))]
        outs = await batched.forward_batch([(f"r{i}", np.array([t])) for i, t in enumerate(tokens)])
        for i, t in enumerate(tokens):
            ref = await one.forward(f"r{i}", np.array([t]))
            assert outs[i].shape == ref.shape == (49152,) and outs[i].dtype == np.float32
            np.testing.assert_allclose(outs[i], ref, atol=2e-3)
            assert int(np.argmax(outs[i])) == int(np.argmax(ref))
            assert batched.position(f"r{i}") == one.position(f"r{i}") == len(PROMPTS[i]) + step + 1


async def test_batched_and_lone_steps_mix_on_the_same_requests(source: ModelSource, n_layers: int) -> None:
    """A request's steps run batched while others generate and alone otherwise (the compiled step): each
    reads the cache the other wrote, through cache growth."""
    one, mixed = await _pair(source, n_layers, 0, n_layers - 1)
    for e in (one, mixed):
        await e.forward("a", np.array(PROMPTS[0]))
        await e.forward("b", np.array(PROMPTS[1]))
    for step in range(8):
        ta, tb = np.array([100 + step]), np.array([200 + step])
        refs = [await one.forward("a", ta), await one.forward("b", tb)]
        if step % 2 == 0:
            outs = await mixed.forward_batch([("a", ta), ("b", tb)])
        else:
            outs = [await mixed.forward("a", ta), await mixed.forward("b", tb)]
        for out, ref in zip(outs, refs, strict=True):
            np.testing.assert_allclose(out, ref, atol=2e-3)
            assert int(np.argmax(out)) == int(np.argmax(ref))
    assert mixed.position("a") == len(PROMPTS[0]) + 8 and mixed.position("b") == len(PROMPTS[1]) + 8


async def test_batches_on_first_and_last_shards_chain(source: ModelSource, n_layers: int) -> None:
    """A first shard's batch returns (1, hidden) per step, which a last shard's batch takes as input."""
    first_one, first_b = await _pair(source, n_layers, 0, 9)
    last_one, last_b = await _pair(source, n_layers, 10, n_layers - 1)
    for i, prompt in enumerate(PROMPTS[:3]):
        for f, last in ((first_one, last_one), (first_b, last_b)):
            await last.forward(f"r{i}", await f.forward(f"r{i}", np.array(prompt)))
    hidden = await first_b.forward_batch([(f"r{i}", np.array([i + 2])) for i in range(3)])
    assert all(h.shape == (1, 576) and h.dtype == np.float32 for h in hidden)
    logits = await last_b.forward_batch([(f"r{i}", h) for i, h in enumerate(hidden)])
    for i in range(3):
        ref = await last_one.forward(f"r{i}", await first_one.forward(f"r{i}", np.array([i + 2])))
        np.testing.assert_allclose(logits[i], ref, atol=2e-3)
        assert int(np.argmax(logits[i])) == int(np.argmax(ref))


async def test_bad_batches_fail_before_any_cache_moves(source: ModelSource, n_layers: int) -> None:
    e = MlxEngine(representation="dense")
    await e.load(source, 0, n_layers - 1, n_layers)
    await e.forward("a", np.array([1, 2]))
    await e.forward("b", np.array([3]))
    bad = {
        "same request id twice": [("a", np.array([4])), ("a", np.array([5]))],
        "one position per request": [("a", np.array([4])), ("b", np.array([5, 6]))],
        "out of range": [("a", np.array([4])), ("b", np.array([49152]))],
        "at least one step": [],
    }
    for message, steps in bad.items():
        with pytest.raises(ValueError, match=message):
            await e.forward_batch(steps)
    assert (e.position("a"), e.position("b")) == (2, 1)


async def test_context_overflow_in_a_batch_moves_no_cache(source: ModelSource, n_layers: int) -> None:
    e = MlxEngine(representation="dense", max_context=4, cache_step=2)
    await e.load(source, 0, n_layers - 1, n_layers)
    await e.forward("a", np.array([1]))
    await e.forward("full", np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="context overflow"):
        await e.forward_batch([("a", np.array([4])), ("full", np.array([5]))])
    assert (e.position("a"), e.position("full")) == (1, 4)
    out = await e.forward_batch([("a", np.array([4]))])  # the request that fits still runs
    assert out[0].shape == (49152,) and e.position("a") == 2


async def test_batch_before_load_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="load"):
        await MlxEngine().forward_batch([("r", np.array([1]))])
