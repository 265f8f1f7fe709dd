"""Float32 weights of one shard, prepared once at load for few, cheap calls per token.

* fused: ``qkv`` = [q; k; v] and ``gate_up`` = [gate; up], so a block is four matrix products;
* stored transposed, ``(in, out)`` C-contiguous, and applied as ``x @ w_t`` when ``out >= in`` (qkv, o,
  gate_up): OpenBLAS's GEMV over that layout streams the matrix ~20-30% faster here than ``x @ w.T`` over
  ``(out, in)``; ``down`` (``in > out``) is the other way round and stays ``(out, in)`` (measured, see
  docs/engines.md);
* the RMSNorm weights are folded into the columns of the matrix that follows each norm
  (``(x * s * g) @ W.T == (x * s) @ (W * g).T``), and the attention scale ``1/sqrt(head_dim)`` into the q
  rows (and q bias), so neither costs an operation per token;
* copied into one 2 MiB-aligned :class:`WeightArena` in the order a decode step reads them, so the
  matrices sit on transparent huge pages (NumPy only madvises allocations >= 4 MiB, and ``qkv``/``o``/
  ``down`` are 1.3-3.5 MB each) and one step streams one contiguous region.

The math that runs over them is :mod:`exo_engine_numpy.layers`.
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
    """One transformer block, fused, norms and attention scale folded in; ``*_t`` are ``(in, out)``,
    ``down`` is ``(out, in)``."""

    qkv_t: np.ndarray
    qkv_bias: np.ndarray | None
    o_t: np.ndarray
    gate_up_t: np.ndarray
    down: np.ndarray

    def arrays(self) -> list[np.ndarray]:
        """Every array held (for memory accounting)."""
        out = [self.qkv_t, self.o_t, self.gate_up_t, self.down]
        return out + ([self.qkv_bias] if self.qkv_bias is not None else [])


def fuse_layer(
    config: ModelConfig,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    o: np.ndarray,
    gate: np.ndarray,
    up: np.ndarray,
    down: np.ndarray,
    attn_norm: np.ndarray,
    ffn_norm: np.ndarray,
    bias: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> LayerWeights:
    """Build a :class:`LayerWeights` from ``(out, in)`` float32 matrices and the block's norm weights."""
    scale = F32(1.0 / math.sqrt(config.head_dim))
    qkv = np.concatenate([q * scale, k, v], axis=0)
    qkv *= attn_norm.astype(F32)[None, :]
    gate_up = np.concatenate([gate, up], axis=0)
    gate_up *= ffn_norm.astype(F32)[None, :]
    qkv_bias = None
    if bias is not None:
        qkv_bias = np.concatenate([bias[0] * scale, bias[1], bias[2]]).astype(F32)
    return LayerWeights(
        qkv_t=np.ascontiguousarray(qkv.T),
        qkv_bias=qkv_bias,
        o_t=np.ascontiguousarray(o.T),
        gate_up_t=np.ascontiguousarray(gate_up.T),
        down=np.ascontiguousarray(down, dtype=F32),
    )


#: transparent huge page size on x86-64 (and the alignment that lets the kernel back a region with them)
HUGE_PAGE = 2 * 1024 * 1024


class WeightArena:
    """One float32 buffer, 2 MiB-aligned, that matrices are copied into back to back.

    NumPy madvises (``MADV_HUGEPAGE``) every allocation of 4 MiB or more, so a large arena lives on huge
    pages: fewer TLB misses for the many 1-3 MB per-block matrices, each of which alone would be too
    small (and misaligned) for a huge page. Measured here: the block GEMVs of a decode step ~5-10% faster.

    Args:
        n_floats: capacity in float32 elements.
    """

    def __init__(self, n_floats: int) -> None:
        raw = np.empty(n_floats + HUGE_PAGE // 4, F32)
        skip = (-raw.ctypes.data % HUGE_PAGE) // 4
        self.buf = raw[skip : skip + n_floats]
        self.used = 0

    def put(self, a: np.ndarray) -> np.ndarray:
        """A C-contiguous float32 copy of ``a`` in the arena (``ValueError`` if it does not fit)."""
        end = self.used + a.size
        if end > self.buf.size:
            raise ValueError(f"weight arena full: {self.used} + {a.size} > {self.buf.size} floats")
        view = self.buf[self.used : end].reshape(a.shape)
        view[...] = a
        self.used = end
        return view


def pack_layer(lw: LayerWeights, arena: WeightArena) -> LayerWeights:
    """``lw`` with its matrices copied into ``arena`` in decode order (qkv, o, gate_up, down)."""
    return LayerWeights(
        qkv_t=arena.put(lw.qkv_t),
        qkv_bias=lw.qkv_bias,
        o_t=arena.put(lw.o_t),
        gate_up_t=arena.put(lw.gate_up_t),
        down=arena.put(lw.down),
    )


def layer_floats(lw: LayerWeights) -> int:
    """float32 elements of a layer's matrices (what :func:`pack_layer` puts in an arena)."""
    return int(lw.qkv_t.size + lw.o_t.size + lw.gate_up_t.size + lw.down.size)


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
    #: measured ~1.3-1.8x faster here than ``h @ W.T`` over ``(vocab, hidden)``
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
