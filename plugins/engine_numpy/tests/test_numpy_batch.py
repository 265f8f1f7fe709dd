"""Batched decode steps (``forward_batch``): the same numbers as one step at a time, and clean errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from exo_engine_numpy import layers
from exo_engine_numpy.engine import NumpyEngine

from exo_core.engine import BatchingEngine
from exo_core.models.source import load_config, resolve_model

PROMPTS = [[1, 17, 250], [5], [99, 3, 42, 7, 8, 200], [11, 12]]


async def _pair(folder: Path, first: int, last: int | None = None) -> tuple[NumpyEngine, NumpyEngine]:
    """Two engines on the same layers (``last`` None: through the model's last layer)."""
    source = resolve_model(str(folder))
    n = load_config(source).n_layers
    one, batched = NumpyEngine(initial_cache=4), NumpyEngine(initial_cache=4)
    for e in (one, batched):
        await e.load(source, first, n - 1 if last is None else last, n)
    return one, batched


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
async def test_a_batch_of_steps_equals_the_steps_one_by_one(
    tiny_folders: dict[str, Path], variant: str
) -> None:
    """Requests at different positions (caches growing past their first size), whole model: same logits."""
    one, batched = await _pair(tiny_folders[variant], 0)
    assert isinstance(batched, BatchingEngine)
    for i, prompt in enumerate(PROMPTS):
        for e in (one, batched):
            await e.forward(f"r{i}", np.array(prompt))
    for step in range(5):
        tokens = [(7 * step + 31 * i) % 320 for i in range(len(PROMPTS))]
        outs = await batched.forward_batch([(f"r{i}", np.array([t])) for i, t in enumerate(tokens)])
        for i, t in enumerate(tokens):
            ref = await one.forward(f"r{i}", np.array([t]))
            assert outs[i].shape == ref.shape == (320,)
            np.testing.assert_array_equal(outs[i], ref)  # bit for bit: batching changes no token
            assert batched.position(f"r{i}") == one.position(f"r{i}") == len(PROMPTS[i]) + step + 1


async def test_batches_on_first_and_last_shards_chain(tiny_folders: dict[str, Path]) -> None:
    """A first shard's batch returns (1, hidden) per step, which a last shard's batch takes as input."""
    folder = tiny_folders["llama"]
    first_one, first_b = await _pair(folder, 0, 0)
    last_one, last_b = await _pair(folder, 1, 2)
    for i, prompt in enumerate(PROMPTS[:3]):
        for f, last in ((first_one, last_one), (first_b, last_b)):
            await last.forward(f"r{i}", await f.forward(f"r{i}", np.array(prompt)))
    hidden = await first_b.forward_batch([(f"r{i}", np.array([i + 2])) for i in range(3)])
    assert all(h.shape == (1, 64) for h in hidden)
    logits = await last_b.forward_batch([(f"r{i}", h) for i, h in enumerate(hidden)])
    for i in range(3):
        ref = await last_one.forward(f"r{i}", await first_one.forward(f"r{i}", np.array([i + 2])))
        np.testing.assert_array_equal(logits[i], ref)


async def test_bad_batches_fail_before_any_cache_moves(tiny_folders: dict[str, Path]) -> None:
    _, e = await _pair(tiny_folders["llama"], 0)
    await e.forward("a", np.array([1, 2]))
    await e.forward("b", np.array([3]))
    bad = {
        "same request id twice": [("a", np.array([4])), ("a", np.array([5]))],
        "one position per request": [("a", np.array([4])), ("b", np.array([5, 6]))],
        "out of range": [("a", np.array([4])), ("b", np.array([999]))],
        "at least one step": [],
    }
    for message, steps in bad.items():
        with pytest.raises(ValueError, match=message):
            await e.forward_batch(steps)
    assert (e.position("a"), e.position("b")) == (2, 1)


async def test_context_overflow_in_a_batch_moves_no_cache(tiny_folders: dict[str, Path]) -> None:
    e = NumpyEngine(max_context=4, initial_cache=2)
    await e.load(resolve_model(str(tiny_folders["llama"])), 0, 2, 3)
    await e.forward("a", np.array([1]))
    await e.forward("full", np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="context overflow"):
        await e.forward_batch([("a", np.array([4])), ("full", np.array([5]))])
    assert (e.position("a"), e.position("full")) == (1, 4)


async def test_batch_before_load_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="load"):
        await NumpyEngine().forward_batch([("r", np.array([1]))])


@pytest.mark.parametrize("rows", [1, 2, 5, 8])
def test_few_rows_matmul_equals_matmul_over_column_chunks(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    monkeypatch.setattr(layers, "CHUNK_BYTES", 4 * 40 * 300)  # 300 columns of a 40-row matrix per chunk
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 40), dtype=np.float32)
    w = rng.standard_normal((40, 1000), dtype=np.float32)
    for mat in (w, np.ascontiguousarray(w.T).T):  # (in, out) and the transposed view of (out, in)
        got = layers.few_rows_matmul(x, mat)
        assert got.shape == (rows, 1000) and got.dtype == np.float32
        np.testing.assert_allclose(got, x @ mat, rtol=1e-5, atol=1e-5)
        for b in range(rows):  # each row exactly its own GEMV
            np.testing.assert_array_equal(got[b], x[b] @ mat)
