"""The Llama-family forward pass of one shard on MLX, with a per-request KV cache.

Activations are float32 ``(T, hidden)``. q/k rows are in Hugging Face order (the shared readers un-permute
GGUF), so RoPE is rotate-half (``mx.fast.rope(..., traditional=False)``). The MLP half of each block has fixed
shapes for a given ``T`` and is ``mx.compile``d for decode (fusing norm, SiLU and the gating product); the
attention half depends on the cache length and runs eagerly, and so do prompts (a compiled graph is
specialised to one input shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from exo_core.models.config import ModelConfig
from exo_engine_mlx.weights import Block, ShardParams

if TYPE_CHECKING:
    import mlx.core as mx


class KVCache:
    """Keys and values of one request on one shard: per block ``(1, n_kv_heads, capacity, head_dim)``
    float32 arrays, grown in steps of ``step`` positions up to ``max_len``."""

    def __init__(self, n_blocks: int, n_kv_heads: int, head_dim: int, step: int, max_len: int) -> None:
        self.n_blocks, self.n_kv_heads, self.head_dim = n_blocks, n_kv_heads, head_dim
        self.step, self.max_len = step, max_len
        self.keys: list[mx.array] = []
        self.values: list[mx.array] = []
        self.capacity = 0
        self.pos = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by every key and value array."""
        return 2 * self.n_blocks * self.n_kv_heads * self.capacity * self.head_dim * 4

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more positions (``ValueError`` past the context limit)."""
        import mlx.core as mx

        need = self.pos + n
        if need > self.max_len:
            raise ValueError(
                f"context overflow: {self.pos} cached + {n} new positions > limit {self.max_len}")
        if need <= self.capacity:
            return
        new_cap = min(self.max_len, -(-need // self.step) * self.step)
        shape = (1, self.n_kv_heads, new_cap - self.capacity, self.head_dim)
        for store in (self.keys, self.values):
            if not store:
                store.extend(mx.zeros(shape, mx.float32) for _ in range(self.n_blocks))
            else:
                for i, old in enumerate(store):
                    store[i] = mx.concatenate([old[:, :, : self.pos], mx.zeros(
                        (1, self.n_kv_heads, new_cap - self.pos, self.head_dim), mx.float32)], axis=2)
        self.capacity = new_cap

    def arrays(self) -> list[mx.array]:
        """Every cache array (evaluated with each step's output)."""
        return [*self.keys, *self.values]


def _mlp(h: mx.array, norm: mx.array, block: Block, eps: float) -> mx.array:
    import mlx.core as mx

    x = mx.fast.rms_norm(h, norm, eps)
    gu = block.gate_up(x)
    g, u = mx.split(gu, 2, axis=-1)
    return h + block.down(g * mx.sigmoid(g) * u)


class ShardModel:
    """Runs a :class:`ShardParams` over a request's :class:`KVCache` (synchronous: call it in a worker
    thread)."""

    def __init__(self, config: ModelConfig, params: ShardParams, *, is_first: bool, is_last: bool,
                 compile: bool = True) -> None:
        import mlx.core as mx

        self.config, self.params = config, params
        self.is_first, self.is_last = is_first, is_last
        self.scale = 1.0 / math.sqrt(config.head_dim)
        eps = float(config.rms_norm_eps)

        def mlp(h: mx.array, norm: mx.array, i: int) -> mx.array:
            return _mlp(h, norm, params.blocks[i], eps)

        self._mlps: list[Callable[[mx.array, mx.array], mx.array]] = []
        for i in range(len(params.blocks)):
            fn = (lambda h, n, i=i: mlp(h, n, i))  # noqa: E731 - one closure per block, captured weights
            self._mlps.append(mx.compile(fn) if compile else fn)
        self._eager_mlps = [(lambda h, n, i=i: mlp(h, n, i)) for i in range(len(params.blocks))]

    def new_cache(self, step: int, max_len: int) -> KVCache:
        """An empty cache for one request."""
        c = self.config
        return KVCache(len(self.params.blocks), c.n_kv_heads, c.head_dim, step, max_len)

    def _attention(self, h: mx.array, b: Block, cache: KVCache, li: int, pos: int) -> mx.array:
        import mlx.core as mx

        c = self.config
        t = h.shape[0]
        nh, nkv, hd = c.n_heads, c.n_kv_heads, c.head_dim
        x = mx.fast.rms_norm(h, b.attn_norm, c.rms_norm_eps)
        qkv = b.qkv(x)
        if b.qkv_bias is not None:
            qkv = qkv + b.qkv_bias
        q = qkv[:, : nh * hd].reshape(t, nh, hd).transpose(1, 0, 2)[None]
        k = qkv[:, nh * hd : (nh + nkv) * hd].reshape(t, nkv, hd).transpose(1, 0, 2)[None]
        v = qkv[:, (nh + nkv) * hd :].reshape(t, nkv, hd).transpose(1, 0, 2)[None]
        freqs = self.params.freqs
        q = mx.fast.rope(q, hd, traditional=False, base=None, scale=1.0, offset=pos, freqs=freqs)
        k = mx.fast.rope(k, hd, traditional=False, base=None, scale=1.0, offset=pos, freqs=freqs)
        end = pos + t
        keys, values = cache.keys[li], cache.values[li]
        keys[:, :, pos:end] = k
        values[:, :, pos:end] = v
        cache.keys[li], cache.values[li] = keys, values
        att = mx.fast.scaled_dot_product_attention(
            q, keys[:, :, :end], values[:, :, :end], scale=self.scale, mask="causal" if t > 1 else None
        )
        return h + b.o(att[0].transpose(1, 0, 2).reshape(t, nh * hd))

    def forward(self, cache: KVCache, x: np.ndarray, all_logits: bool) -> np.ndarray:
        """Run the shard over ``x`` (int ids on the first shard, float32 hidden states otherwise) at the
        cache's next positions; returns float32 hidden states, or logits on the last shard."""
        import mlx.core as mx

        p = self.params
        if self.is_first:
            assert p.embed is not None
            h = p.embed.rows(mx.array(x.astype(np.int32)))
        else:
            h = mx.array(x)
        t = h.shape[0]
        cache.reserve(t)
        pos = cache.pos
        # compiled graphs are per input shape: use them for decode (T=1, one shape) and run prompts of
        # arbitrary length eagerly rather than recompiling every block for each new length
        mlps = self._mlps if t == 1 else self._eager_mlps
        for li, b in enumerate(p.blocks):
            h = self._attention(h, b, cache, li, pos)
            h = mlps[li](h, b.ffn_norm)
        if self.is_last:
            assert p.norm is not None and p.lm_head is not None
            rows = h if all_logits else h[-1:]
            h = p.lm_head(mx.fast.rms_norm(rows, p.norm, self.config.rms_norm_eps))
        mx.eval(h, *cache.arrays())
        cache.pos = pos + t
        out = np.array(h, copy=True)
        if out.dtype != np.float32:
            out = out.astype(np.float32)
        return out[0] if self.is_last and not all_logits else out
