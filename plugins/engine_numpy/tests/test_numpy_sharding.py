"""Acceptance 3: chained shards equal the whole model; a shard loads (and holds) only its layers."""

from __future__ import annotations

import numpy as np
import pytest
from exo_engine_numpy.engine import NumpyEngine

from exo_core.models.source import ModelSource, resolve_model
from exo_core.models.tokenizer import load_tokenizer

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def source() -> ModelSource:
    return resolve_model("smollm2-135m")


async def _run_chain(engines: list[NumpyEngine], ids: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    """Prefill then ``steps`` greedy decode steps through the chain; returns prefill logits and tokens."""
    x: np.ndarray = np.array(ids)
    for e in engines:
        x = await e.forward("req", x, all_logits=e is engines[-1])
    prefill = x
    tokens = [int(np.argmax(prefill[-1]))]
    for _ in range(steps):
        x = np.array(tokens[-1:])
        for e in engines:
            x = await e.forward("req", x)
        tokens.append(int(np.argmax(x)))
    return prefill, tokens


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bounds", [[(0, 14), (15, 29)], [(0, 9), (10, 19), (20, 29)]])
async def test_shards_chained_equal_full_model(source: ModelSource, bounds: list[tuple[int, int]]) -> None:
    ids = load_tokenizer(source).encode(PROMPT)
    full = NumpyEngine(weights="float32")
    await full.load(source, 0, 29, 30)
    ref_logits, ref_tokens = await _run_chain([full], ids, 8)
    full_bytes = full.memory().weights
    del full
    shards = []
    for first, last in bounds:
        e = NumpyEngine(weights="float32")
        await e.load(source, first, last, 30)
        shards.append(e)
    logits, tokens = await _run_chain(shards, ids, 8)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    assert tokens == ref_tokens
    if len(bounds) == 2:
        first, last = (e.memory().weights / full_bytes for e in shards)
        # The first shard reads the (tied) embedding from the memory-mapped Q8_0 table: 0.45x.
        assert first <= 0.6, first
        # The last shard needs the float32 output head (21% of the model, shared with the embedding when one
        # engine holds everything) plus 15 of 30 blocks: 0.605x, the floor for a float32 head.
        assert last <= 0.61, last


@pytest.mark.timeout(180)
async def test_quantized_shards_chained_equal_full_model(source: ModelSource) -> None:
    """The quantized path: every row is computed alone (int8 activations per row and block), so a chain
    reproduces the whole model's numbers; each half holds about half of the weights."""
    ids = load_tokenizer(source).encode(PROMPT)
    full = NumpyEngine()
    await full.load(source, 0, 29, 30)
    assert full.representation == "quantized"
    ref_logits, ref_tokens = await _run_chain([full], ids, 8)
    full_bytes = full.memory().weights
    del full
    shards = []
    for first, last in [(0, 14), (15, 29)]:
        e = NumpyEngine()
        await e.load(source, first, last, 30)
        shards.append(e)
    logits, tokens = await _run_chain(shards, ids, 8)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    assert tokens == ref_tokens
    first, last = (e.memory().weights / full_bytes for e in shards)
    # 15 of 30 Q4_1 blocks (36% of the model) plus, on the first, the Q8_0 embedding it reads from the file,
    # and on the last the Q8_0 head: the tied table is counted by both halves
    assert first <= 0.65, first
    assert last <= 0.65, last


async def test_middle_shard_holds_only_its_layers(source: ModelSource) -> None:
    e = NumpyEngine(weights="float32")
    await e.load(source, 10, 11, 30)
    shard = e._shard
    assert shard is not None
    w = shard.weights
    assert w.embed is None and w.norm is None and w.lm_head_t is None
    assert len(w.layers) == 2
    per_layer = w.nbytes() / 2
    assert per_layer < 20e6  # one SmolLM2 block is ~14 MB in float32; the embedding alone is 113 MB
    info = e.shard()
    assert info is not None and (info.first_layer, info.last_layer, info.n_layers) == (10, 11, 30)
    assert not info.is_first and not info.is_last
    hidden = np.random.default_rng(0).standard_normal((3, 576), dtype=np.float32)
    out = await e.forward("r", hidden)
    assert out.shape == (3, 576) and out.dtype == np.float32
    assert e.position("r") == 3


async def test_first_and_last_shards_hold_embedding_and_head(source: ModelSource) -> None:
    first, last = NumpyEngine(weights="float32"), NumpyEngine(weights="float32")
    await first.load(source, 0, 0, 30)
    await last.load(source, 29, 29, 30)
    assert first._shard is not None and last._shard is not None
    assert first._shard.weights.embed is not None and first._shard.weights.lm_head_t is None
    lw = last._shard.weights
    assert lw.embed is None and lw.lm_head_t is not None and lw.lm_head_t.shape == (576, 49152)  # tied
    h = await first.forward("r", np.array([504, 3575]))
    logits = await last.forward("r", h)
    assert logits.shape == (49152,)
