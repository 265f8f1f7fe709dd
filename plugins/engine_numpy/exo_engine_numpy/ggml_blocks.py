"""GGUF quantized blocks as integer codes, per-block scales and per-block offsets, exactly (no
requantization).

Every supported GGML type becomes the form onnxruntime's ``MatMulNBits`` multiplies with its default zero
point (8 for 4-bit codes, 128 for 8-bit codes), plus an optional per-block offset::

    w[r, b*block + j] = scale[r, b] * (code[r, b*block + j] - zero) + offset[r, b]

=========  ====  =====  =================================================================================
type       bits  block  how
=========  ====  =====  =================================================================================
Q4_0       4     32     codes are the nibbles, zero 8 as in the file
Q4_1       4     32     ``d*q + m`` = ``d*(q - 8) + (m + 8d)``: the min becomes the offset
Q4_K       4     32     per-32 6-bit scales/mins decoded from the packing, then as Q4_1
Q8_0       8     32     signed codes shifted by +128
Q5_0       8     32     5-bit ``q - 16`` shifted into 8-bit codes (``q + 112``)
Q5_1/Q5_K  8     32     5-bit codes ``+ 128``, the min as the offset (Q5_K: scales/mins as Q4_K)
Q6_K       8     16     6-bit ``q - 32`` shifted (``q + 96``), one scale per 16 values (``d * int8 scale``)
=========  ====  =====  =================================================================================

All arithmetic on scales is float32 over float16 inputs, so ``scale * (code - zero) + offset`` reproduces
``gguf.quants.dequantize`` to float32 rounding (the unit tests check every type). Other types (Q2_K, Q3_K,
IQ*, ...) are not decoded here; :mod:`exo_engine_numpy.qmatrix` quantizes their float32 values to 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

F32 = np.float32


@dataclass
class Blocks:
    """One matrix ``(rows, cols)`` as :class:`MatMulNBits`-ready codes.

    Attributes:
        codes: uint8 ``(rows, cols)``, one code per weight (0..15 when ``bits == 4``).
        scale: float32 ``(rows, cols // block)``.
        offset: float32 ``(rows, cols // block)`` or ``None`` when every offset is 0.
        bits: 4 or 8 (the zero point is ``2 ** (bits - 1)``).
        block: weights per scale along a row (16 or 32).
    """

    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    bits: int
    block: int

    def dequantize(self) -> np.ndarray:
        """The float32 matrix (reference and tests)."""
        rows, cols = self.codes.shape
        nb = cols // self.block
        v = self.codes.reshape(rows, nb, self.block).astype(F32) - F32(2 ** (self.bits - 1))
        w = v * self.scale[..., None]
        if self.offset is not None:
            w += self.offset[..., None]
        return w.reshape(rows, cols)  # type: ignore[no-any-return]

    def take_rows(self, index: np.ndarray) -> Blocks:
        """The rows ``index`` (any integer index array), e.g. to undo a row permutation."""
        return Blocks(
            self.codes[index],
            self.scale[index],
            None if self.offset is None else self.offset[index],
            self.bits,
            self.block,
        )


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """float32 of the little-endian float16 at byte ``at`` of every block ``b[..., :]``."""
    return b[..., at : at + 2].copy().view("<f2")[..., 0].astype(F32)


def _blocks(raw: np.ndarray, size: int) -> np.ndarray:
    rows = raw.shape[0]
    return raw.reshape(rows, -1, size)


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """``(..., 16)`` bytes -> ``(..., 32)`` values: low nibbles are values 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray, n: int) -> np.ndarray:
    """``(..., 4)`` bytes of a little-endian uint32 -> ``(..., n)`` bit ``j`` of value ``j``, as 0/1."""
    word = qh.copy().view("<u4")[..., 0]
    return ((word[..., None] >> np.arange(n, dtype=np.uint32)) & 1).astype(np.uint8)


def _flat(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


def q4_0(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 18)
    return Blocks(_flat(_nibbles_32(b[..., 2:])), _f16(b, 0), None, 4, 32)


def q4_1(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 20)
    d, m = _f16(b, 0), _f16(b, 2)
    return Blocks(_flat(_nibbles_32(b[..., 4:])), d, m + F32(8) * d, 4, 32)


def q8_0(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 34)
    codes = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return Blocks(_flat(codes), _f16(b, 0), None, 8, 32)


def q5_0(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 22)
    q = _nibbles_32(b[..., 6:]) | (_high_bits(b[..., 2:6], 32) << 4)
    return Blocks(_flat(q + np.uint8(112)), _f16(b, 0), None, 8, 32)


def q5_1(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 24)
    q = _nibbles_32(b[..., 8:]) | (_high_bits(b[..., 4:8], 32) << 4)
    return Blocks(_flat(q + np.uint8(128)), _f16(b, 0), _f16(b, 2), 8, 32)


def _k_scales_mins(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins packed in 12 bytes (Q4_K, Q5_K): ``(..., 8)`` each, as float32."""
    sc = sc.astype(np.uint8)
    lo_s, lo_m, hi = sc[..., 0:4], sc[..., 4:8], sc[..., 8:12]
    scales = np.concatenate([lo_s & 63, (hi & 0x0F) | ((lo_s >> 6) << 4)], axis=-1)
    mins = np.concatenate([lo_m & 63, (hi >> 4) | ((lo_m >> 6) << 4)], axis=-1)
    return scales.astype(F32), mins.astype(F32)


def _k_quant_4_5(b: np.ndarray, q: np.ndarray, bits: int) -> Blocks:
    """Q4_K / Q5_K: ``q`` ``(rows, n_super, 256)`` raw codes, the super-block header at ``b[..., :16]``."""
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_mins(b[..., 4:16])
    scale = d[..., None] * sc  # (rows, n_super, 8)
    offset = -(dmin[..., None] * mn)
    rows = b.shape[0]
    if bits == 4:
        offset = offset + F32(8) * scale
        codes = q
    else:
        codes = q + np.uint8(128)
    return Blocks(_flat(codes), scale.reshape(rows, -1), offset.reshape(rows, -1), bits, 32)


def _chunks_64(qs: np.ndarray) -> np.ndarray:
    """``(..., 128)`` bytes -> ``(..., 256)`` nibbles: each 32-byte chunk gives 32 low, then 32 high."""
    c = qs.reshape(*qs.shape[:-1], 4, 32)
    return np.concatenate([c & 0x0F, c >> 4], axis=-1).reshape(*qs.shape[:-1], 256)


def q4_k(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 144)
    return _k_quant_4_5(b, _chunks_64(b[..., 16:144]), 4)


def q5_k(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 176)
    qh = b[..., 16:48]  # bit 2c / 2c+1 of byte l: high bit of value l of chunk c, low / high half
    shifts = np.arange(8, dtype=np.uint8).reshape(4, 2)
    high = (qh[..., None, None, :] >> shifts[None, None, :, :, None]) & 1  # (rows, ns, 4, 2, 32)
    q = _chunks_64(b[..., 48:176]) | (high.reshape(*qh.shape[:-1], 256) << 4)
    return _k_quant_4_5(b, q, 8)


def q6_k(raw: np.ndarray) -> Blocks:
    b = _blocks(raw, 210)
    rows, ns = b.shape[:2]
    ql = b[..., 0:128].reshape(rows, ns, 2, 64)
    qh = b[..., 128:192].reshape(rows, ns, 2, 32)
    sc = b[..., 192:208].view(np.int8).astype(F32)
    d = _f16(b, 208)
    # per 128-half: values l, l+32, l+64, l+96 from ql[l] / ql[l+32] nibbles and 2-bit fields of qh[l]
    low = np.stack([ql[..., :32] & 0x0F, ql[..., 32:] & 0x0F, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=-2)
    high = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)
    q = (low | (high << 4)).reshape(rows, ns, 256)
    return Blocks(_flat(q + np.uint8(96)), (d[..., None] * sc).reshape(rows, -1), None, 8, 16)


#: GGML type id -> decoder of the raw ``(rows, bytes per row)`` blocks
DECODERS: dict[int, Callable[[np.ndarray], Blocks]] = {
    2: q4_0,
    3: q4_1,
    6: q5_0,
    7: q5_1,
    8: q8_0,
    12: q4_k,
    13: q5_k,
    14: q6_k,
}


def decode(raw: np.ndarray, qtype: int) -> Blocks | None:
    """The blocks of a GGUF tensor's raw bytes, or ``None`` when type ``qtype`` has no exact mapping."""
    decoder = DECODERS.get(qtype)
    return None if decoder is None else decoder(np.ascontiguousarray(raw))


def quantize_8bit(w: np.ndarray, block: int = 32) -> Blocks:
    """Symmetric 8-bit blocks of a float32 ``(rows, cols)`` matrix (for types without an exact mapping,
    and float matrices when quantized weights are forced): scale ``max|w| / 127`` per block, codes
    ``round(w / scale) + 128``. Error per weight <= scale / 2 (~0.4% of the block's largest magnitude)."""
    rows, cols = w.shape
    if cols % block:
        raise ValueError(f"cannot quantize a matrix of {cols} columns in blocks of {block}")
    blocks = w.reshape(rows, cols // block, block).astype(F32)
    scale = np.abs(blocks).max(axis=-1) / F32(127)
    inv = np.divide(F32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    codes = np.rint(blocks * inv[..., None]).astype(np.int16) + 128
    return Blocks(codes.astype(np.uint8).reshape(rows, cols), scale.astype(F32), None, 8, block)
