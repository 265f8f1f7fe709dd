"""The Llama-family forward pass of one shard in float32 NumPy (no per-head or per-position Python loops).

Weights are fused for few, large GEMMs: ``qkv`` = [q; k; v] rows and ``gate_up`` = [gate; up] rows, all
``(out, in)`` C-contiguous and used as ``x @ w.T`` (BLAS reads them row-contiguously). q/k rows are in
Hugging Face order, so RoPE is rotate-half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from exo_core.models.config import ModelConfig
from exo_core.models.weights import RowLookup

F32 = np.float32


@dataclass
class LayerWeights:
    """One transformer block, fused."""

    attn_norm: np.ndarray
    qkv: np.ndarray
    qkv_bias: np.ndarray | None
    o: np.ndarray
    ffn_norm: np.ndarray
    gate_up: np.ndarray
    down: np.ndarray

    def arrays(self) -> list[np.ndarray]:
        """Every array held (for memory accounting)."""
        out = [self.attn_norm, self.qkv, self.o, self.ffn_norm, self.gate_up, self.down]
        return out + ([self.qkv_bias] if self.qkv_bias is not None else [])


@dataclass
class ShardWeights:
    """Everything a shard holds: its blocks, and the embedding / final norm / head when it is first / last.

    ``embed`` is a :class:`RowLookup` over the stored (memory-mapped, possibly quantized) table, since a
    lookup needs a few rows, not 100+ MB;
    or, when it doubles as this shard's (tied) output head, over that array.
    """

    layers: list[LayerWeights]
    embed: RowLookup | None = None
    norm: np.ndarray | None = None
    #: the output head transposed, ``(hidden, vocab)`` C-contiguous: ``h @ lm_head_t`` streams it row by row,
    #: measured ~1.8x faster here than ``h @ W.T`` over ``(vocab, hidden)``
    lm_head_t: np.ndarray | None = None
    #: the embedding is a view of ``lm_head_t`` (tied weights, one copy)
    embed_shared: bool = False
    inv_freq: np.ndarray = field(default_factory=lambda: np.zeros(0, F32))

    def nbytes(self) -> int:
        """Bytes of distinct arrays (a tied embedding/head counts once)."""
        arrays = [self.norm, self.lm_head_t, *(x for layer in self.layers for x in layer.arrays())]
        total = sum(a.nbytes for a in arrays if a is not None)
        if self.embed is not None and not self.embed_shared:
            total += self.embed.nbytes
        return total


def rope_inv_freq(config: ModelConfig, rope_freqs: np.ndarray | None = None) -> np.ndarray:
    """RoPE inverse frequencies ``(head_dim/2,)`` with the model's theta and scaling (linear, llama3)."""
    hd = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind not in (None, "default"):
        raise ValueError(f"RoPE scaling {kind!r} is not supported (supported: linear, llama3)")
    if rope_freqs is not None:  # GGUF llama3 models store the per-frequency divisors as a tensor
        inv = inv / rope_freqs.astype(np.float64)
    return inv.astype(F32)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x^2) + eps) * w`` over the last axis, float32."""
    ms = np.einsum("ij,ij->i", x, x)[:, None] * F32(1.0 / x.shape[-1])
    return x * (F32(1.0) / np.sqrt(ms + F32(eps))) * w  # type: ignore[no-any-return]


def rope_tables(inv_freq: np.ndarray, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin ``(n, head_dim/2)`` for positions ``start..start+n-1``."""
    ang = np.arange(start, start + n, dtype=F32)[:, None] * inv_freq[None, :]
    return np.cos(ang), np.sin(ang)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE on ``x`` of shape ``(T, heads, head_dim)``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    np.subtract(x1 * c, x2 * s, out=out[..., :half])
    np.add(x2 * c, x1 * s, out=out[..., half:])
    return out


def attention_block(
    x: np.ndarray,
    lw: LayerWeights,
    cfg: ModelConfig,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    pos: int,
    cos: np.ndarray,
    sin: np.ndarray,
    mask: np.ndarray | None,
) -> np.ndarray:
    """``x + attention(norm(x))``; writes this step's keys/values into ``k_cache[:, pos:pos+T]``.

    ``k_cache``/``v_cache`` are ``(n_kv_heads, capacity, head_dim)`` views for this layer.
    """
    t = x.shape[0]
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    h = rms_norm(x, lw.attn_norm, cfg.rms_norm_eps)
    qkv = h @ lw.qkv.T
    if lw.qkv_bias is not None:
        qkv += lw.qkv_bias
    q = apply_rope(qkv[:, : nh * hd].reshape(t, nh, hd), cos, sin)
    k = apply_rope(qkv[:, nh * hd : (nh + nkv) * hd].reshape(t, nkv, hd), cos, sin)
    v = qkv[:, (nh + nkv) * hd :].reshape(t, nkv, hd)
    end = pos + t
    k_cache[:, pos:end] = k.transpose(1, 0, 2)
    v_cache[:, pos:end] = v.transpose(1, 0, 2)
    group = nh // nkv
    # (T, H, hd) -> (KV, G*T, hd): query heads grouped under the kv head they share
    qg = q.reshape(t, nkv, group, hd).transpose(1, 2, 0, 3).reshape(nkv, group * t, hd)
    scores = qg @ k_cache[:, :end].transpose(0, 2, 1)  # (KV, G*T, S)
    scores *= F32(1.0 / math.sqrt(hd))
    if mask is not None:
        scores = scores.reshape(nkv, group, t, end)
        scores += mask
        scores = scores.reshape(nkv, group * t, end)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    att = scores @ v_cache[:, :end]  # (KV, G*T, hd)
    att = att.reshape(nkv, group, t, hd).transpose(2, 0, 1, 3).reshape(t, nh * hd)
    return x + att @ lw.o.T  # type: ignore[no-any-return]


def mlp_block(x: np.ndarray, lw: LayerWeights, cfg: ModelConfig) -> np.ndarray:
    """``x + down(silu(gate(norm(x))) * up(norm(x)))``."""
    h = rms_norm(x, lw.ffn_norm, cfg.rms_norm_eps)
    gu = h @ lw.gate_up.T
    f = gu.shape[1] // 2
    g, u = gu[:, :f], gu[:, f:]
    a = g / (F32(1.0) + np.exp(-g)) * u
    return x + a @ lw.down.T  # type: ignore[no-any-return]


def causal_mask(pos: int, t: int) -> np.ndarray | None:
    """Additive mask ``(T, pos+T)``: query ``i`` (position ``pos+i``) sees keys ``<= pos+i``; None if T=1."""
    if t == 1:
        return None
    q = np.arange(pos, pos + t)[:, None]
    k = np.arange(pos + t)[None, :]
    return np.where(k <= q, F32(0.0), F32(-np.inf)).astype(F32)
