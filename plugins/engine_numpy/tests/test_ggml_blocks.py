"""GGUF blocks -> MatMulNBits codes: every mapped type reproduces ``gguf.quants.dequantize`` exactly.

Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are made here with gguf-py's quantizer (which the quant fixture shows to
write the same bytes as llama.cpp's); the K-quants come from files llama.cpp's own quantizer wrote
(tests/fixtures/quant, made by tests/reference/make_quant_fixtures.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from exo_engine_numpy.ggml_blocks import DECODERS, Blocks, decode, quantize_8bit
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "quant"
SIMPLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
K_TYPES = {"Q4_K", "Q5_K", "Q6_K"}


def _check(raw: np.ndarray, qtype: GGMLQuantizationType) -> Blocks:
    blocks = decode(raw, int(qtype))
    assert blocks is not None, qtype.name
    ref = dequantize(raw, qtype).astype(np.float32)
    got = blocks.dequantize()
    assert got.shape == ref.shape and got.dtype == np.float32
    # float32 rounding of scale * code + offset, relative to the block's magnitude
    tol = 4 * np.finfo(np.float32).eps * max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(got - ref).max()) <= tol, qtype.name
    top = 2**blocks.bits
    assert int(blocks.codes.max()) < top and blocks.block in (16, 32)
    return blocks


@pytest.mark.parametrize("name", SIMPLE)
def test_simple_types_dequantize_exactly(name: str) -> None:
    qtype = GGMLQuantizationType[name]
    w = np.random.default_rng(1).standard_normal((48, 256)).astype(np.float32)
    w[3] = 0.0  # an all-zero row: scale 0
    w[5, :32] += 7.0  # one block far from zero: Q4_1/Q5_1 mins matter
    _check(quantize(w, qtype), qtype)


def _kquant_tensors() -> list[tuple[str, str]]:
    out = []
    for path in sorted(FIXTURES.glob("kq-*.gguf")):
        for t in GGUFReader(path).tensors:
            if t.tensor_type.name in K_TYPES:
                out.append((path.name, t.name))
    return out


def test_fixture_files_hold_every_k_type() -> None:
    seen = set()
    for path in FIXTURES.glob("kq-*.gguf"):
        seen |= {t.tensor_type.name for t in GGUFReader(path).tensors}
    assert K_TYPES <= seen, seen


@pytest.mark.parametrize(("file", "tensor"), _kquant_tensors())
def test_k_quants_from_llamacpp_dequantize_exactly(file: str, tensor: str) -> None:
    t = next(t for t in GGUFReader(FIXTURES / file).tensors if t.name == tensor)
    raw = np.asarray(t.data).reshape(int(t.shape[1]), -1)  # (rows, bytes per row)
    _check(raw, t.tensor_type)


def test_unmapped_types_are_not_decoded() -> None:
    for qtype in (GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K, GGMLQuantizationType.IQ4_NL):
        assert int(qtype) not in DECODERS
        assert decode(np.zeros((1, 110), np.uint8), int(qtype)) is None


def test_take_rows_keeps_rows_together() -> None:
    w = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    blocks = _check(quantize(w, GGMLQuantizationType.Q4_1), GGMLQuantizationType.Q4_1)
    order = np.array([3, 1, 0, 2, 7, 6, 5, 4])
    np.testing.assert_array_equal(blocks.take_rows(order).dequantize(), blocks.dequantize()[order])


def test_quantize_8bit_error_is_half_a_step() -> None:
    w = np.random.default_rng(3).standard_normal((16, 128)).astype(np.float32)
    w[2] = 0.0
    blocks = quantize_8bit(w)
    step = np.abs(w.reshape(16, 4, 32)).max(axis=-1) / 127
    err = np.abs(blocks.dequantize() - w).reshape(16, 4, 32).max(axis=-1)
    assert np.all(err <= step / 2 + 1e-7)
    assert not blocks.dequantize()[2].any()
    with pytest.raises(ValueError, match="blocks of 32"):
        quantize_8bit(np.zeros((2, 40), np.float32))
