"""Split matmuls: large dense matrices cut in two, the halves multiplied on two CPU streams, same numbers."""

from __future__ import annotations

import numpy as np
from exo_engine_mlx import thread as mlx_thread
from exo_engine_mlx.engine import MlxEngine
from exo_engine_mlx.runtime import second_cpu_stream
from exo_engine_mlx.weights import SPLIT_MIN_BYTES, Linear

from exo_core.models.source import ModelSource


def _linear_checks() -> None:
    import mlx.core as mx

    rng = np.random.default_rng(0)
    stream = second_cpu_stream()
    x = mx.array(rng.standard_normal((3, 256), dtype=np.float32))
    ids = mx.array(np.array([0, 5, 2047, 2048, 4095], np.int32))
    # (out, in): wide (stored transposed) and tall (stored as is), both above the split threshold
    for shape in ((4096, 256), (256, 4096)):
        w = rng.standard_normal(shape, dtype=np.float32)
        assert w.nbytes >= SPLIT_MIN_BYTES
        whole, split = Linear.dense(w), Linear.dense(w, stream)
        assert whole.w2 is None and split.w2 is not None and split.stream == stream
        assert split.nbytes == whole.nbytes == w.nbytes
        xin = x if shape[1] == 256 else mx.array(rng.standard_normal((3, 4096), dtype=np.float32))
        np.testing.assert_array_equal(np.array(split(xin)), np.array(whole(xin)))
        first, second = split.halves(xin)
        w_first, w_second = whole.halves(xin)
        np.testing.assert_array_equal(np.array(first), np.array(w_first))
        np.testing.assert_array_equal(np.array(second), np.array(w_second))
        if shape[0] == 4096:  # rows on both sides of the cut (the tied embedding lookup)
            np.testing.assert_array_equal(np.array(split.rows(ids)), w[np.array(ids)])
    small = rng.standard_normal((64, 64), dtype=np.float32)
    assert Linear.dense(small, stream).w2 is None  # below the threshold: one matrix


def test_linear_split_equals_whole() -> None:
    mlx_thread.call(_linear_checks)  # the second stream exists on the MLX thread only


async def test_split_engine_matches_unsplit_bit_for_bit(
    dense_engine: MlxEngine, source: ModelSource, n_layers: int
) -> None:
    whole = MlxEngine(representation="dense", split_matmuls=False)
    await whole.load(source, 0, n_layers - 1, n_layers)
    model = dense_engine._model
    assert model is not None and whole._model is not None
    block = model.params.blocks[0]
    assert block.gate_up.w2 is not None and block.down.w2 is not None  # 7 and 3.5 MB
    assert block.qkv.w2 is None and block.o.w2 is None  # 2.2 and 1.3 MB: one stream
    assert model.params.lm_head is not None and model.params.lm_head.w2 is not None
    assert all(b.gate_up.w2 is None for b in whole._model.params.blocks)
    assert dense_engine.memory().weights == whole.memory().weights
    ids = np.array([1, 9690, 314, 2990, 49151, 30, 11], np.int64)  # ids on both sides of the head's cut
    a = await dense_engine.forward("split", ids)
    b = await whole.forward("whole", ids)
    np.testing.assert_array_equal(a, b)
    for _ in range(6):
        token = np.array([int(np.argmax(a))])
        a = await dense_engine.forward("split", token)
        b = await whole.forward("whole", token)
        np.testing.assert_array_equal(a, b)
    await dense_engine.free("split")
