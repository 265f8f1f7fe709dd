"""The numpy engine's protocol behaviour on a tiny model: inputs, caches, memory, load, plugin."""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import numpy as np
import pytest
from exo_engine_numpy.engine import NumpyEngine
from exo_engine_numpy.plugin import NumpyEngineSettings

from exo_core.components import ComponentContext
from exo_core.engine import InferenceEngine
from exo_core.models.source import resolve_model
from exo_core.plugins import load_plugins
from exo_core.settings import CoreSettings

IDS = [1, 17, 250, 3, 99, 199, 42]


@pytest.fixture
async def engine(tiny_folders: dict[str, Path]) -> NumpyEngine:
    e = NumpyEngine(initial_cache=4)
    await e.load(resolve_model(str(tiny_folders["llama"])), 0, 2, 3)
    return e


def test_plugin_registers_a_factory_that_builds_the_engine() -> None:
    plugins = load_plugins(env={"EXO_PLUGINS": "engine_numpy"})
    component = plugins.registry.get("engine", "numpy")
    assert component.settings is NumpyEngineSettings
    ctx = ComponentContext(core=CoreSettings(), settings=NumpyEngineSettings(max_context=64), node_id="n")
    built = component.build(ctx)
    assert isinstance(built, NumpyEngine) and isinstance(built, InferenceEngine)
    assert built.max_context == 64


async def test_forward_before_load_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="load"):
        await NumpyEngine().forward("r", np.array([1]))


async def test_bad_inputs_are_rejected(engine: NumpyEngine) -> None:
    with pytest.raises(ValueError, match="token ids"):
        await engine.forward("r", np.array([[1, 2]]))
    with pytest.raises(ValueError, match="token ids"):
        await engine.forward("r", np.array([0.5]))
    with pytest.raises(ValueError, match="out of range"):
        await engine.forward("r", np.array([320]))
    assert engine.position("r") == 0


async def test_hidden_state_checks_on_a_later_shard(tiny_folders: dict[str, Path]) -> None:
    e = NumpyEngine()
    await e.load(resolve_model(str(tiny_folders["llama"])), 1, 2, 3)
    with pytest.raises(ValueError, match="shape"):
        await e.forward("r", np.zeros((2, 63), np.float32))
    with pytest.raises(ValueError, match="float32"):
        await e.forward("r", np.zeros((2, 64), np.int32))
    out = await e.forward("r", np.zeros((2, 64), np.float16))
    assert out.shape == (320,) and out.dtype == np.float32


async def test_incremental_decode_equals_one_prefill(engine: NumpyEngine) -> None:
    full = await engine.forward("a", np.array(IDS), all_logits=True)
    for i, t in enumerate(IDS):  # one token at a time, crossing the cache growth from 4 to 8 positions
        step = await engine.forward("b", np.array([t]))
        np.testing.assert_allclose(step, full[i], atol=1e-5)
    assert engine.position("a") == engine.position("b") == len(IDS)


async def test_concurrent_requests_keep_separate_caches(engine: NumpyEngine) -> None:
    alone = await engine.forward("solo", np.array(IDS))
    results: dict[str, np.ndarray] = {}

    async def run(rid: str, ids: list[int]) -> None:
        for t in ids:
            results[rid] = await engine.forward(rid, np.array([t]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "x", IDS)
        tg.start_soon(run, "y", IDS[::-1])
    np.testing.assert_allclose(results["x"], alone, atol=1e-5)


async def test_memory_accounting_and_free(engine: NumpyEngine) -> None:
    weights = engine.memory().weights
    assert weights > 0 and engine.memory().kv_cache == 0
    await engine.forward("r", np.array(IDS))
    kv = engine.memory().kv_cache
    # 3 layers x (k + v) x 2 kv heads x capacity 8 x head_dim 16 x 4 bytes
    assert kv == 3 * 2 * 2 * 8 * 16 * 4
    await engine.free("r")
    await engine.free("unknown")
    assert engine.memory().kv_cache == 0 and engine.memory().weights == weights
    assert engine.position("r") == 0


async def test_context_limit(tiny_folders: dict[str, Path]) -> None:
    e = NumpyEngine(max_context=5)
    await e.load(resolve_model(str(tiny_folders["llama"])), 0, 2, 3)
    await e.forward("r", np.array(IDS[:4]))
    with pytest.raises(ValueError, match="context overflow"):
        await e.forward("r", np.array(IDS[:2]))
    assert e.position("r") == 4
    await e.forward("r", np.array([5]))


async def test_load_same_shard_is_a_noop_and_a_new_range_replaces_it(
    engine: NumpyEngine, tiny_folders: dict[str, Path]
) -> None:
    source = resolve_model(str(tiny_folders["llama"]))
    shard_obj = engine._shard
    await engine.forward("r", np.array(IDS))
    await engine.load(source, 0, 2, 3)
    assert engine._shard is shard_obj and engine.position("r") == len(IDS)
    await engine.load(source, 0, 1, 3)
    info = engine.shard()
    assert info is not None and (info.first_layer, info.last_layer) == (0, 1) and not info.is_last
    assert engine.position("r") == 0
    out = await engine.forward("r", np.array(IDS))
    assert out.shape == (len(IDS), 64)


async def test_bad_layer_ranges(tiny_folders: dict[str, Path]) -> None:
    source = resolve_model(str(tiny_folders["llama"]))
    e = NumpyEngine()
    with pytest.raises(ValueError, match="layer range"):
        await e.load(source, 2, 3, 3)
    with pytest.raises(ValueError, match="has 3"):
        await e.load(source, 0, 1, 4)
    assert e.shard() is None


def test_rope_table_grows_and_matches_direct_angles() -> None:
    from exo_engine_numpy.layers import RopeTable

    inv = (1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16)).astype(np.float32)
    table = RopeTable(inv, initial=4)
    cos2, sin2 = table.get(1000, 3)  # past the initial 4 positions: the table grows
    assert cos2.shape == sin2.shape == (3, 2, 8) and cos2.dtype == sin2.dtype == np.float32
    ang = np.arange(1000, 1003, dtype=np.float32)[:, None] * inv[None, :]
    np.testing.assert_array_equal(cos2[:, 0], np.cos(ang))
    np.testing.assert_array_equal(cos2[:, 1], np.cos(ang))
    np.testing.assert_array_equal(sin2[:, 0], -np.sin(ang))
    np.testing.assert_array_equal(sin2[:, 1], np.sin(ang))
    assert table.get(0, 1)[0].shape == (1, 2, 8)


async def test_layer_matrices_share_one_aligned_arena_in_decode_order(engine: NumpyEngine) -> None:
    from exo_engine_numpy.fused_weights import HUGE_PAGE

    shard = engine._shard
    assert shard is not None
    mats = [m for lw in shard.weights.layers for m in (lw.qkv_t, lw.o_t, lw.gate_up_t, lw.down)]
    assert mats[0].ctypes.data % HUGE_PAGE == 0
    for prev, cur in itertools.pairwise(mats):  # back to back, in the order a decode step reads them
        assert cur.ctypes.data == prev.ctypes.data + prev.nbytes
        assert cur.flags.c_contiguous and cur.dtype == np.float32


def test_weight_arena_refuses_to_overflow() -> None:
    from exo_engine_numpy.fused_weights import WeightArena

    arena = WeightArena(6)
    view = arena.put(np.arange(4, dtype=np.float32).reshape(2, 2))
    np.testing.assert_array_equal(view, [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="arena full"):
        arena.put(np.zeros(3, np.float32))


@pytest.mark.parametrize("weights", ["float32", "quantized"])
async def test_a_prompt_in_chunks_equals_one_prefill(tiny_folders: dict[str, Path], weights: str) -> None:
    """The stage runner prefills long prompts in chunks (several positions at a cache position > 0)."""
    e = NumpyEngine(initial_cache=4, weights=weights)
    await e.load(resolve_model(str(tiny_folders["llama"])), 0, 2, 3)
    full = await e.forward("whole", np.array(IDS), all_logits=True)
    parts = [
        await e.forward("chunks", np.array(IDS[i : i + 3]), all_logits=True) for i in range(0, len(IDS), 3)
    ]
    np.testing.assert_allclose(np.concatenate(parts), full, atol=1e-4 if weights == "float32" else 2e-2)
    assert e.position("chunks") == len(IDS)
