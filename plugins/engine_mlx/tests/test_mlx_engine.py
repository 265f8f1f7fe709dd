"""The engine protocol on MLX: shapes, dtypes, caches, errors (default model, dense and quantized)."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from exo_engine_mlx.engine import MlxEngine, choose_representation

from exo_core.engine import InferenceEngine
from exo_core.models.source import ModelSource

PROMPT = np.array([504, 3458, 282, 4649, 314, 7042, 30, 378, 1101], dtype=np.int64)


def test_satisfies_protocol(dense_engine: MlxEngine) -> None:
    assert isinstance(dense_engine, InferenceEngine)
    info = dense_engine.shard()
    assert info is not None and info.is_first and info.is_last and info.n_layers == 30
    assert dense_engine.representation == "dense"


async def test_forward_shapes_positions_and_free(dense_engine: MlxEngine) -> None:
    logits = await dense_engine.forward("shapes", PROMPT)
    assert logits.shape == (49152,) and logits.dtype == np.float32
    assert dense_engine.position("shapes") == len(PROMPT)
    every = await dense_engine.forward("shapes-all", PROMPT, all_logits=True)
    assert every.shape == (len(PROMPT), 49152) and every.dtype == np.float32
    np.testing.assert_allclose(every[-1], logits, atol=1e-4)
    assert dense_engine.memory().kv_cache > 0
    await dense_engine.free("shapes")
    await dense_engine.free("shapes-all")
    await dense_engine.free("never-seen")
    assert dense_engine.position("shapes") == 0


async def test_chunked_prefill_and_cache_growth_match_one_prefill(source: ModelSource, n_layers: int) -> None:
    # cache_step=4 makes the cache grow several times inside this prompt
    engine = MlxEngine(representation="dense", cache_step=4)
    await engine.load(source, 0, n_layers - 1, n_layers)
    whole = await engine.forward("whole", PROMPT, all_logits=True)
    await engine.forward("pieces", PROMPT[:3])
    await engine.forward("pieces", PROMPT[3:4])
    tail = await engine.forward("pieces", PROMPT[4:], all_logits=True)
    np.testing.assert_allclose(tail, whole[4:], atol=2e-4)
    assert engine.position("pieces") == len(PROMPT)


async def test_compiled_decode_steps_match_one_prefill(source: ModelSource, n_layers: int) -> None:
    # one-token steps take the compiled whole-shard path (position as an array, attention over the whole
    # capacity under a mask); cache_step=4 makes it retrace at each growth; two interleaved requests keep
    # their own caches
    engine = MlxEngine(representation="dense", cache_step=4)
    await engine.load(source, 0, n_layers - 1, n_layers)
    whole = await engine.forward("whole", PROMPT, all_logits=True)
    other = await engine.forward("other", PROMPT[::-1].copy(), all_logits=True)
    for i in range(len(PROMPT)):
        step = await engine.forward("steps", PROMPT[i : i + 1])
        np.testing.assert_allclose(step, whole[i], atol=2e-4)
        back = await engine.forward("back", PROMPT[::-1][i : i + 1].copy())
        np.testing.assert_allclose(back, other[i], atol=2e-4)
    assert engine.position("steps") == engine.position("back") == len(PROMPT)


async def test_quantized_matches_dense(dense_engine: MlxEngine, quantized_engine: MlxEngine) -> None:
    # the Q4_1 blocks are repacked bit for bit, so both representations compute the same function
    assert quantized_engine.representation == "quantized"
    assert quantized_engine.memory().weights < dense_engine.memory().weights / 4
    a = await dense_engine.forward("q-vs-d", PROMPT[:5])
    b = await quantized_engine.forward("q-vs-d", PROMPT[:5])
    np.testing.assert_allclose(a, b, atol=2e-3)
    await dense_engine.free("q-vs-d")
    await quantized_engine.free("q-vs-d")


async def test_bad_inputs_raise(dense_engine: MlxEngine, source: ModelSource, n_layers: int) -> None:
    with pytest.raises(ValueError, match="token ids"):
        await dense_engine.forward("bad", np.zeros((2, 576), np.float32))
    with pytest.raises(ValueError, match="out of range"):
        await dense_engine.forward("bad", np.array([49152]))
    with pytest.raises(ValueError, match="token ids"):
        await dense_engine.forward("bad", np.array([], dtype=np.int64))
    with pytest.raises(RuntimeError, match="no model loaded"):
        await MlxEngine().forward("x", PROMPT)
    with pytest.raises(ValueError, match="invalid layer range"):
        await MlxEngine().load(source, 5, 40, n_layers)
    with pytest.raises(ValueError, match="the model has 30"):
        await MlxEngine().load(source, 0, 3, 31)
    with pytest.raises(ValueError, match="representation"):
        MlxEngine(representation="int3")  # type: ignore[arg-type]


async def test_context_overflow(source: ModelSource, n_layers: int) -> None:
    engine = MlxEngine(representation="dense", max_context=8, cache_step=4)
    await engine.load(source, n_layers - 2, n_layers - 1, n_layers)
    await engine.forward("r", np.ones((6, 576), np.float32))
    with pytest.raises(ValueError, match="context overflow"):
        await engine.forward("r", np.ones((3, 576), np.float32))
    assert engine.position("r") == 6
    with pytest.raises(ValueError, match="hidden states"):
        await engine.forward("r", np.ones((1, 575), np.float32))
    with pytest.raises(ValueError, match="float32"):
        await engine.forward("r", np.ones((1, 576), np.float64))


async def test_reloading_frees_the_old_shard_at_once(source: ModelSource, n_layers: int) -> None:
    """A reload frees the old shard before reading the new one (its compiled step referred back to it,
    which left it to the next garbage collection): MLX never holds two shards' weights."""
    import mlx.core as mx

    baseline = mx.get_active_memory()  # the session's other engines
    engine = MlxEngine(representation="dense")
    await engine.load(source, 0, n_layers - 1, n_layers)
    await engine.forward("r", PROMPT)
    await engine.forward("r", PROMPT[:1])  # runs (and caches) the compiled step
    for first, last in ((0, 9), (10, n_layers - 1), (0, 9)):
        assert engine._model is not None
        old = weakref.ref(engine._model)
        await engine.load(source, first, last, n_layers)
        assert old() is None
        x = PROMPT if first == 0 else np.zeros((3, 576), np.float32)
        await engine.forward("r", x)
        await engine.forward("r", x[:1])
        held = mx.get_active_memory() - baseline
        assert held <= engine.memory().weights + 32e6, (first, last, held)


async def test_middle_shard_returns_hidden_states(source: ModelSource, n_layers: int) -> None:
    engine = MlxEngine(representation="dense")
    await engine.load(source, 3, 5, n_layers)
    await engine.load(source, 3, 5, n_layers)  # same shard: no-op
    info = engine.shard()
    assert info is not None and not info.is_first and not info.is_last
    h = await engine.forward("m", np.random.default_rng(0).standard_normal((4, 576)).astype(np.float32))
    assert h.shape == (4, 576) and h.dtype == np.float32 and np.isfinite(h).all()
    # a middle shard holds only its three blocks: no embedding, no head
    assert engine.memory().weights < 50_000_000  # 3 x 14.2 MB; the embedding alone is 113 MB


def test_auto_representation(source: ModelSource) -> None:
    assert choose_representation("auto", source, gpu=False) == "dense"
    assert choose_representation("auto", source, gpu=True) == "quantized"
    assert choose_representation("dense", source, gpu=True) == "dense"
