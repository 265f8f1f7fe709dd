"""How a tensor is stored in its source file, and the MLX quantization that keeps it closest.

``exo_core.models.weights.WeightReader`` hands out float32 arrays and hides the stored type. This small
adapter reads the GGUF tensor table to learn it, so a quantized source can stay quantized on Metal. For the
GGML types whose grid *is* an MLX affine grid (Q4_0, Q4_1, Q8_0: groups of 32, one scale and one offset per
group) :func:`gguf_affine` repacks the stored blocks bit for bit, so nothing is lost; other types are
re-quantized from float32 by ``mx.quantize`` (whose grid keeps zero exact and so differs from GGML's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from exo_core.models.config import ModelConfig
from exo_core.models.source import ModelSource, open_gguf_source
from exo_core.models.weights import unpermute_qk

#: MLX affine quantization supports these group sizes and bit widths.
MLX_GROUP_SIZES = (32, 64, 128)
MLX_BITS = (2, 3, 4, 5, 6, 8)

# GGML type number -> (bits, group size) of the nearest MLX affine quantization. GGML blocks hold 32 values
# (K-quants: 16 or 32 inside 256-value super-blocks); MLX's smallest group is 32.
_GGML_TO_MLX: dict[int, tuple[int, int]] = {
    2: (4, 32),  # Q4_0
    3: (4, 32),  # Q4_1
    6: (5, 32),  # Q5_0
    7: (5, 32),  # Q5_1
    8: (8, 32),  # Q8_0
    10: (2, 32),  # Q2_K
    11: (3, 32),  # Q3_K
    12: (4, 32),  # Q4_K
    13: (5, 32),  # Q5_K
    14: (6, 32),  # Q6_K
    16: (2, 32),  # IQ2_XXS
    17: (2, 32),  # IQ2_XS
    18: (3, 32),  # IQ3_XXS
    19: (2, 32),  # IQ1_S
    20: (4, 32),  # IQ4_NL
    21: (3, 32),  # IQ3_S
    22: (2, 32),  # IQ2_S
    23: (4, 32),  # IQ4_XS
}

_GLOBAL = {"embed": "token_embd.weight", "lm_head": "output.weight"}
_LAYER = {
    "q": "attn_q.weight",
    "k": "attn_k.weight",
    "v": "attn_v.weight",
    "o": "attn_output.weight",
    "gate": "ffn_gate.weight",
    "up": "ffn_up.weight",
    "down": "ffn_down.weight",
}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(\w+)")


@dataclass(frozen=True)
class QuantSpec:
    """An MLX affine quantization: ``bits`` per value, one scale and bias per ``group_size`` values."""

    bits: int
    group_size: int


def gguf_name(internal: str) -> str | None:
    """The GGUF tensor name of an internal matrix name (``layers.3.q`` -> ``blk.3.attn_q.weight``)."""
    if internal in _GLOBAL:
        return _GLOBAL[internal]
    m = _LAYER_RE.fullmatch(internal)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}"
    return None


def source_quant(source: ModelSource, internal: str) -> QuantSpec | None:
    """The MLX quantization closest to how ``internal`` is stored, or ``None`` if it is stored unquantized
    (F32/F16/BF16, and every safetensors tensor)."""
    if source.format != "gguf":
        return None
    name = gguf_name(internal)
    if name is None:
        return None
    info = open_gguf_source(source).tensors.get(name)
    if info is None:
        return None
    spec = _GGML_TO_MLX.get(info.qtype)
    return None if spec is None else QuantSpec(*spec)


def fits(spec: QuantSpec, in_features: int) -> bool:
    """Whether MLX can quantize rows of ``in_features`` values with ``spec``."""
    return spec.group_size in MLX_GROUP_SIZES and spec.bits in MLX_BITS and in_features % spec.group_size == 0


#: GGUF architectures whose q/k rows the converter permuted (the shared reader un-permutes them too).
_PERMUTED_ARCHS = ("llama", "mistral")
_Q4_0, _Q4_1, _Q8_0 = 2, 3, 8


@dataclass
class AffineMatrix:
    """An MLX affine-quantized matrix as NumPy arrays: ``w`` packed into uint32 words (``32 // bits`` values
    each, lowest bits first), float32 ``scales``/``biases`` per group; value = scale * q + bias."""

    w: np.ndarray
    scales: np.ndarray
    biases: np.ndarray
    spec: QuantSpec


def gguf_affine(source: ModelSource, config: ModelConfig, internal: str) -> AffineMatrix | None:
    """The stored blocks of a Q4_0/Q4_1/Q8_0 GGUF matrix repacked exactly into MLX's affine layout (q/k rows
    in Hugging Face order, like the shared reader's), or ``None`` for other types and formats."""
    if source.format != "gguf" or (name := gguf_name(internal)) is None:
        return None
    gguf = open_gguf_source(source)
    info = gguf.tensors.get(name)
    if info is None or info.qtype not in (_Q4_0, _Q4_1, _Q8_0) or len(info.shape) != 2:
        return None
    rows, cols = info.shape
    raw = gguf.raw(name)
    block = {_Q4_0: 18, _Q4_1: 20, _Q8_0: 34}[info.qtype]
    blocks = raw.reshape(rows, cols // 32, block)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if info.qtype == _Q8_0:
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        scales, biases, bits = d, d * np.float32(-128.0), 8
        packed = np.ascontiguousarray(q.reshape(rows, cols)).view(np.uint32)
    else:
        nib = blocks[..., -16:]
        q = np.concatenate([nib & 0x0F, nib >> 4], axis=-1).reshape(rows, cols // 8, 8).astype(np.uint32)
        packed = np.zeros((rows, cols // 8), np.uint32)
        for j in range(8):
            packed |= q[..., j] << np.uint32(4 * j)
        if info.qtype == _Q4_1:
            biases = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        else:
            biases = d * np.float32(-8.0)
        scales, bits = d, 4
    part = internal.rsplit(".", 1)[-1]
    if config.architecture in _PERMUTED_ARCHS and part in ("q", "k"):
        heads = config.n_heads if part == "q" else config.n_kv_heads
        packed, scales, biases = (unpermute_qk(a, heads) for a in (packed, scales, biases))
    return AffineMatrix(
        np.ascontiguousarray(packed),
        np.ascontiguousarray(scales),
        np.ascontiguousarray(biases),
        QuantSpec(bits, 32),
    )
