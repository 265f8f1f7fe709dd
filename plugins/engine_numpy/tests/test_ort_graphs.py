"""The quantized products as onnxruntime graphs: right numbers for every representation, fused as expected,
and sessions that own their weights."""

from __future__ import annotations

import numpy as np
import pytest
from exo_engine_numpy.ggml_blocks import Blocks, decode, quantize_8bit
from exo_engine_numpy.ort_graphs import GraphBuilder, Product, concat_rows, thread_count
from gguf import GGMLQuantizationType
from gguf.quants import quantize

RNG = np.random.default_rng(7)


def _blocks(name: str, rows: int = 96, cols: int = 256) -> Blocks:
    w = RNG.standard_normal((rows, cols)).astype(np.float32)
    w[:, :32] += 3.0  # a shifted block: the offsets (mins) carry real weight
    qtype = GGMLQuantizationType[name]
    blocks = decode(quantize(w, qtype), int(qtype))
    assert blocks is not None
    return blocks


def _run(products: list[Product], x: np.ndarray) -> np.ndarray:
    g = GraphBuilder("t")
    y = g.linear("x", products)
    n = sum(p.shape[0] for p in products)
    return g.session([("x", x.shape[1])], [(y, n)])(x)


def _reference(products: list[Product], x: np.ndarray) -> np.ndarray:
    mats = [p.weight.dequantize() if isinstance(p.weight, Blocks) else p.weight for p in products]
    return x.astype(np.float64) @ np.concatenate(mats).T.astype(np.float64)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 5])
def test_product_matches_dequantized_matrix(name: str, rows: int) -> None:
    products = [Product(_blocks(name))]
    x = RNG.standard_normal((rows, 256)).astype(np.float32)
    got, ref = _run(products, x), _reference(products, x)
    # int8 activations inside the kernel: ~1% of the output's scale, as llama.cpp's q8 activations
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max(), name


def _int8_rounded(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` as llama.cpp's Q8 activations hold it: per ``block`` values, ``d = max|x| / 127``, then
    ``round(x / d) * d``."""
    xb = x.reshape(x.shape[0], -1, block).astype(np.float64)
    d = np.abs(xb).max(-1, keepdims=True) / 127
    return (np.round(xb / np.where(d == 0, 1, d)) * d).reshape(x.shape)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 5])
def test_product_is_the_file_weights_times_int8_activations(name: str, rows: int) -> None:
    """Codes and offsets alike multiply the activations rounded to 8 bits per block: the offset term takes
    the rounded block sums, as llama.cpp's Q4_1 x Q8_1 dot product does, so the whole product is the
    dequantized matrix times the rounded ``x`` to float32 rounding (exact block sums missed it by ~1%)."""
    blocks = _blocks(name, cols=512)
    x = (RNG.standard_normal((rows, 512)) * RNG.uniform(0.1, 4.0, (rows, 512))).astype(np.float32)
    got = _run([Product(blocks)], x)
    ref = _int8_rounded(x, blocks.block) @ blocks.dequantize().astype(np.float64).T
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), name


def test_block_16_and_mixed_products_concatenate_in_order() -> None:
    w16 = RNG.standard_normal((64, 256)).astype(np.float32)
    b16 = quantize_8bit(w16, block=16)
    products = [Product(_blocks("Q4_1", 32)), Product(b16), Product(_blocks("Q8_0", 48)), Product(w16 * 0.5)]
    x = RNG.standard_normal((3, 256)).astype(np.float32)
    got, ref = _run(products, x), _reference(products, x)
    assert got.shape == (3, 32 + 64 + 48 + 64)
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()


def test_concat_rows_fuses_like_with_like() -> None:
    q41, q40, q8 = _blocks("Q4_1", 8), _blocks("Q4_0", 8), _blocks("Q8_0", 8)
    f = np.ones((8, 256), np.float32)
    fused = concat_rows([Product(q41), Product(q40), Product(q8), Product(f), Product(f)])
    assert [p.shape for p in fused] == [(16, 256), (8, 256), (16, 256)]
    first = fused[0].weight
    assert isinstance(first, Blocks) and first.offset is not None
    np.testing.assert_array_equal(first.offset[8:], 0)  # Q4_0 rows carry no offset
    np.testing.assert_allclose(first.dequantize(), np.concatenate([q41.dequantize(), q40.dequantize()]))


def test_float_product_is_float32_exact() -> None:
    w = RNG.standard_normal((40, 64)).astype(np.float32)
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(_run([Product(w)], x), x @ w.T, rtol=1e-5, atol=1e-5)


def test_session_owns_its_weights() -> None:
    """onnxruntime copies (and packs) the weights while building the session, so the builder may drop its
    arrays: overwriting them afterwards must not change a single output bit."""
    blocks = _blocks("Q4_1")
    norm = np.linspace(0.5, 1.5, 256, dtype=np.float32)
    g = GraphBuilder("t")
    y = g.linear(g.rms_norm("x", norm, 1e-5), [Product(blocks), Product(np.ones((8, 256), np.float32))])
    held = list(g.initializers.values())
    graph = g.session([("x", 256)], [(y, 104)])
    x = RNG.standard_normal((2, 256)).astype(np.float32)
    before = graph(x)
    for a in held:
        a[...] = 0
    np.testing.assert_array_equal(graph(x), before)
    assert graph.nbytes == sum(a.nbytes for a in held)


def test_rms_norm_matches_numpy() -> None:
    w = np.linspace(0.5, 1.5, 64, dtype=np.float32)
    g = GraphBuilder("t")
    y = g.rms_norm("x", w, 1e-5)
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(g.session([("x", 64)], [(y, 64)])(x), ref, rtol=1e-5, atol=1e-6)


def test_thread_count_follows_blas_env() -> None:
    assert thread_count({"OPENBLAS_NUM_THREADS": "1"}) == 1
    assert thread_count({"OMP_NUM_THREADS": "3"}) == 3
    assert thread_count({"OPENBLAS_NUM_THREADS": "x"}) >= 1
