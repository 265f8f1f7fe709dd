"""The Llama-family forward pass of one shard in float32 NumPy (no per-head or per-position Python loops).

The blocks run over :class:`~exo_engine_numpy.fused_weights.LayerWeights`: fused, transposed, with the
norm weights and the attention scale folded in (see :mod:`exo_engine_numpy.fused_weights`), so a block is
four matrix products and the norms here only scale.

q/k rows are in Hugging Face order, so RoPE is rotate-half. A single-token step (decode) takes a dedicated
path on 1-D vectors with ~25 NumPy calls per block (:func:`block_step`); one step of each of several
requests takes :func:`block_steps`, which gives every row exactly the numbers of its lone step; prompts
take :func:`attention_block` and :func:`mlp_block` over all their positions.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from exo_core.models.config import ModelConfig
from exo_engine_numpy.fused_weights import LayerWeights

F32 = np.float32


class RopeTable:
    """RoPE factors per position for rotate-half on ``(..., 2, head_dim/2)`` views, grown on demand.

    ``cos2[p] = [cos, cos]`` and ``sin2[p] = [-sin, sin]`` (each ``(2, head_dim/2)``), so a rotation is
    ``x * cos2 + x[..., ::-1, :] * sin2``. Growing replaces both arrays at once under a lock; readers
    take one consistent snapshot, so concurrent forwards (worker threads) are safe.
    """

    def __init__(self, inv_freq: np.ndarray, initial: int = 1024) -> None:
        self.inv_freq = inv_freq.astype(F32)
        self._lock = threading.Lock()
        self._tables = self._build(initial)

    def _build(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        ang = np.arange(0, n, dtype=F32)[:, None] * self.inv_freq[None, :]
        cos, sin = np.cos(ang), np.sin(ang)
        return np.stack([cos, cos], axis=1), np.stack([-sin, sin], axis=1)

    def _covering(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        """The current tables, grown first if they stop before position ``end - 1``."""
        tables = self._tables
        if end > tables[0].shape[0]:
            with self._lock:
                tables = self._tables
                if end > tables[0].shape[0]:
                    tables = self._build(max(end, 2 * tables[0].shape[0]))
                    self._tables = tables
        return tables

    def get(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``cos2, sin2`` of shape ``(n, 2, head_dim/2)`` for positions ``start..start+n-1``."""
        cos2, sin2 = self._covering(start + n)
        return cos2[start : start + n], sin2[start : start + n]

    def at(self, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``cos2, sin2`` of shape ``(len(positions), 2, head_dim/2)`` for arbitrary positions."""
        cos2, sin2 = self._covering(max(positions) + 1)
        return cos2[positions], sin2[positions]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x^2) + eps) * w`` over the last axis, float32."""
    ms = np.einsum("ij,ij->i", x, x)[:, None] * F32(1.0 / x.shape[-1])
    return x * (F32(1.0) / np.sqrt(ms + F32(eps))) * w  # type: ignore[no-any-return]


def rms_scale(x: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x^2) + eps)`` over the last axis (the norm's weight lives in the next matrix)."""
    ms = np.einsum("ij,ij->i", x, x)[:, None] * F32(1.0 / x.shape[-1])
    return x * (F32(1.0) / np.sqrt(ms + F32(eps)))  # type: ignore[no-any-return]


def attend_one(
    rot: np.ndarray, v_new: np.ndarray, cfg: ModelConfig, k_cache: np.ndarray, v_cache: np.ndarray, pos: int
) -> np.ndarray:
    """Attention of one position: store its rotated key and value at ``pos``, return ``(n_heads*head_dim,)``.

    ``rot`` is ``(n_heads + n_kv_heads, head_dim)``: the pre-scaled, rotated queries then keys; ``v_new`` the
    ``n_kv_heads*head_dim`` values; ``k_cache``/``v_cache`` are ``(n_kv_heads, capacity, head_dim)``.
    """
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    end = pos + 1
    k_cache[:, pos] = rot[nh:]
    v_cache[:, pos] = v_new.reshape(nkv, hd)
    # query heads grouped under the kv head they share: (KV, G, hd), a view in head order
    scores = rot[:nh].reshape(nkv, nh // nkv, hd) @ k_cache[:, :end].transpose(0, 2, 1)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    att: np.ndarray = scores @ v_cache[:, :end]
    att /= scores.sum(axis=-1, keepdims=True)
    return att.reshape(nh * hd)


def norm_scale(x: np.ndarray, eps: float) -> np.float32:
    """RMSNorm's ``1 / sqrt(mean(x^2) + eps)`` of one vector, as a float32 scalar (the decode paths use it
    for every row, so a request's numbers do not depend on whether its step ran alone or in a batch)."""
    return F32(1.0 / math.sqrt(float(np.dot(x, x)) / x.shape[0] + eps))


def small_gemv(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x @ w`` for one vector over a small ``(in, out)`` matrix (``qkv``, ``o``: 1-2 MB), by NumPy's
    einsum loop rather than OpenBLAS.

    OpenBLAS's GEMV is latency-bound on matrices this small (thread hand-off and ramp-up per call: ``o``
    reads at ~16 GB/s, ``qkv`` ~20 GB/s with 2 threads), where einsum's single-threaded loop streams
    26-28 GB/s. Over whole decode steps, interleaved in one process (25 rounds of 32 tokens): 21.3 ms vs
    22.8 ms median per token. The large products (``gate_up``, ``down``, the head) stay on BLAS, whose two
    threads win there. Deterministic, so batched and lone steps agree bit for bit.
    """
    return np.einsum("i,io->o", x, w, out=out)


def silu_mul(gu: np.ndarray) -> np.ndarray:
    """``SiLU(gate) * up`` for ``gu = [gate, up]`` along the last axis, in few passes."""
    f = gu.shape[-1] // 2
    g = gu[..., :f]
    a: np.ndarray = np.negative(g)
    np.exp(a, out=a)
    a += F32(1.0)
    np.divide(g, a, out=a)
    a *= gu[..., f:]
    return a


def block_step(
    x: np.ndarray,
    lw: LayerWeights,
    cfg: ModelConfig,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    pos: int,
    cos2: np.ndarray,
    sin2: np.ndarray,
) -> None:
    """One block for one token, updating the residual ``x`` (1-D, float32, owned by the caller) in place.

    ``k_cache``/``v_cache`` are ``(n_kv_heads, capacity, head_dim)`` views for this layer; ``cos2``/``sin2``
    the ``(2, head_dim/2)`` RoPE factors of position ``pos``.
    """
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    n_qk = (nh + nkv) * hd
    # attention: norm (weight folded into qkv_t) -> qkv -> RoPE on q and k together -> cache -> softmax
    h = x * norm_scale(x, cfg.rms_norm_eps)
    qkv = small_gemv(h, lw.qkv_t)
    if lw.qkv_bias is not None:
        qkv += lw.qkv_bias
    qk = qkv[:n_qk].reshape(nh + nkv, 2, hd // 2)
    rot = qk * cos2
    rot += qk[:, ::-1] * sin2
    x += small_gemv(attend_one(rot.reshape(nh + nkv, hd), qkv[n_qk:], cfg, k_cache, v_cache, pos), lw.o_t)
    # MLP: norm (weight folded into gate_up_t) -> SiLU(gate) * up -> down
    h = x * norm_scale(x, cfg.rms_norm_eps)
    x += silu_mul(h @ lw.gate_up_t) @ lw.down.T


#: bytes of weights :func:`few_rows_matmul` keeps in cache while it runs every row's GEMV over them
CHUNK_BYTES = 4 * 1024 * 1024


def few_rows_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for a handful of rows ``x`` ``(B, in)``: bit for bit each row's own GEMV, at a fraction of
    the memory traffic.

    OpenBLAS packs the whole weight matrix for a GEMM, which for 2-7 rows costs ~3x a GEMV here (measured:
    30 matrices of 576x3072, 1 thread: GEMV 9.4 ms, GEMM of 2 rows 27.9 ms), and its rounding differs from
    the GEMV's. Instead, each column chunk of ``w`` of at most :data:`CHUNK_BYTES` gets one GEMV per row:
    the first reads it from memory, the others from the cache (2 rows 14.3 ms, 4 rows 20.7 ms).
    """
    out = np.empty((x.shape[0], w.shape[1]), F32)
    # chunks of whole 64-column groups: OpenBLAS' GEMV kernel then adds up each column exactly as over the
    # whole matrix (other widths change the last bits), so a batched step equals the step run alone
    step = max(64, CHUNK_BYTES // (4 * w.shape[0]) // 64 * 64)
    for c in range(0, w.shape[1], step):
        chunk = w[:, c : c + step]
        for b in range(x.shape[0]):
            np.matmul(x[b], chunk, out=out[b, c : c + step])
    return out


def block_steps(
    x: np.ndarray,
    lw: LayerWeights,
    cfg: ModelConfig,
    k_caches: list[np.ndarray],
    v_caches: list[np.ndarray],
    positions: list[int],
    cos2: np.ndarray,
    sin2: np.ndarray,
) -> None:
    """One block for one token of each of ``B`` requests; updates the residuals ``x`` (B, hidden) in place.

    Each matrix is read from memory once for the whole batch: ``gate_up`` and ``down`` through
    :func:`few_rows_matmul`, the small ``qkv`` and ``o`` row after row through :func:`small_gemv` (cached
    after the first row), exactly as :func:`block_step` computes them. Attention runs per request, over its
    own cache (``k_caches[b]``, ``v_caches[b]``) at its own position ``positions[b]``. ``cos2``/``sin2``
    are ``(B, 2, head_dim/2)``.
    """
    b_n = x.shape[0]
    h = x * _row_scales(x, cfg.rms_norm_eps)
    qkv = np.empty((b_n, lw.qkv_t.shape[1]), F32)
    for b in range(b_n):
        small_gemv(h[b], lw.qkv_t, out=qkv[b])
    if lw.qkv_bias is not None:
        qkv += lw.qkv_bias
    att = attend_steps(qkv, cfg, k_caches, v_caches, positions, cos2, sin2)
    for b in range(b_n):
        x[b] += small_gemv(att[b], lw.o_t)
    gu = few_rows_matmul(x * _row_scales(x, cfg.rms_norm_eps), lw.gate_up_t)
    x += few_rows_matmul(silu_mul(gu), lw.down.T)


def attend_steps(
    qkv: np.ndarray,
    cfg: ModelConfig,
    k_caches: list[np.ndarray],
    v_caches: list[np.ndarray],
    positions: list[int],
    cos2: np.ndarray,
    sin2: np.ndarray,
) -> np.ndarray:
    """Attention of one position of each of ``B`` requests from their ``qkv`` rows: row ``b`` is rotated
    with ``cos2[b]``/``sin2[b]``, stored in ``k_caches[b]``/``v_caches[b]`` at ``positions[b]`` and attends
    over that cache alone (:func:`attend_one`). Returns ``(B, n_heads*head_dim)``."""
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    n_qk = (nh + nkv) * hd
    rot = rope_rows(qkv, cfg, cos2, sin2)
    att = np.empty((qkv.shape[0], nh * hd), F32)
    for b in range(qkv.shape[0]):
        att[b] = attend_one(rot[b], qkv[b, n_qk:], cfg, k_caches[b], v_caches[b], positions[b])
    return att


def _row_scales(x: np.ndarray, eps: float) -> np.ndarray:
    """:func:`norm_scale` of each row, as a ``(B, 1)`` float32 column."""
    return np.array([norm_scale(row, eps) for row in x], F32)[:, None]


def attention_block(
    x: np.ndarray,
    lw: LayerWeights,
    cfg: ModelConfig,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    pos: int,
    cos2: np.ndarray,
    sin2: np.ndarray,
    mask: np.ndarray | None,
) -> np.ndarray:
    """``x + attention(norm(x))`` for ``T`` rows; writes this step's keys/values into
    ``k_cache[:, pos:pos+T]``. ``cos2``/``sin2`` are ``(T, 2, head_dim/2)`` (see :class:`RopeTable`)."""
    h = rms_scale(x, cfg.rms_norm_eps)
    qkv = h @ lw.qkv_t
    if lw.qkv_bias is not None:
        qkv += lw.qkv_bias
    att = attend_rows(qkv, cfg, k_cache, v_cache, pos, cos2, sin2, mask)
    return x + att @ lw.o_t  # type: ignore[no-any-return]


def rope_rows(qkv: np.ndarray, cfg: ModelConfig, cos2: np.ndarray, sin2: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of the q and k parts of ``qkv`` rows ``(T, ...)``: ``(T, n_heads + n_kv_heads,
    head_dim)``, queries then keys. ``cos2``/``sin2`` are ``(T, 2, head_dim/2)``, one position per row."""
    t = qkv.shape[0]
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    qk = qkv[:, : (nh + nkv) * hd].reshape(t, nh + nkv, 2, hd // 2)
    rot = qk * cos2[:, None]
    rot += qk[:, :, ::-1] * sin2[:, None]
    return rot.reshape(t, nh + nkv, hd)  # type: ignore[no-any-return]


def attend_rows(
    qkv: np.ndarray,
    cfg: ModelConfig,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    pos: int,
    cos2: np.ndarray,
    sin2: np.ndarray,
    mask: np.ndarray | None,
) -> np.ndarray:
    """Causal attention of ``T`` consecutive positions of one request from their ``qkv`` rows (queries
    pre-scaled by ``1/sqrt(head_dim)``): RoPE, keys and values stored at ``pos..pos+T-1``, returns
    ``(T, n_heads*head_dim)``."""
    t = qkv.shape[0]
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    n_qk = (nh + nkv) * hd
    rot = rope_rows(qkv, cfg, cos2, sin2)
    end = pos + t
    k_cache[:, pos:end] = rot[:, nh:].transpose(1, 0, 2)
    v_cache[:, pos:end] = qkv[:, n_qk:].reshape(t, nkv, hd).transpose(1, 0, 2)
    group = nh // nkv
    # (T, H, hd) -> (KV, G*T, hd): query heads grouped under the kv head they share
    qg = rot[:, :nh].reshape(t, nkv, group, hd).transpose(1, 2, 0, 3).reshape(nkv, group * t, hd)
    scores = qg @ k_cache[:, :end].transpose(0, 2, 1)  # (KV, G*T, S), q is pre-scaled
    if mask is not None:
        scores = scores.reshape(nkv, group, t, end)
        scores += mask
        scores = scores.reshape(nkv, group * t, end)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    att = scores @ v_cache[:, :end]  # (KV, G*T, hd)
    return att.reshape(nkv, group, t, hd).transpose(2, 0, 1, 3).reshape(t, nh * hd)  # type: ignore[no-any-return]


def mlp_block(x: np.ndarray, lw: LayerWeights, cfg: ModelConfig) -> np.ndarray:
    """``x + down(silu(gate(norm(x))) * up(norm(x)))`` for ``T`` rows."""
    h = rms_scale(x, cfg.rms_norm_eps)
    return x + silu_mul(h @ lw.gate_up_t) @ lw.down.T  # type: ignore[no-any-return]


def causal_mask(pos: int, t: int) -> np.ndarray | None:
    """Additive mask ``(T, pos+T)``: query ``i`` (position ``pos+i``) sees keys ``<= pos+i``; None if T=1."""
    if t == 1:
        return None
    q = np.arange(pos, pos + t)[:, None]
    k = np.arange(pos + t)[None, :]
    return np.where(k <= q, F32(0.0), F32(-np.inf)).astype(F32)
