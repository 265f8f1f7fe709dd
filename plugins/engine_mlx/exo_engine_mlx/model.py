"""The Llama-family forward pass of one shard on MLX, with a per-request KV cache.

Activations are float32 ``(T, hidden)``. q/k rows are in Hugging Face order (the shared readers un-permute
GGUF), so RoPE is rotate-half (``mx.fast.rope(..., traditional=False)``). A decode step is one compiled
graph for the whole shard (see :class:`ShardModel`); prompts of any length run eagerly (a compiled graph is
specialised to one input shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from exo_core.models.config import ModelConfig
from exo_core.models.request_cache import check_room
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

        check_room(self.pos, n, self.max_len)
        need = self.pos + n
        if need <= self.capacity:
            return
        new_cap = min(self.max_len, -(-need // self.step) * self.step)
        shape = (1, self.n_kv_heads, new_cap - self.capacity, self.head_dim)
        for store in (self.keys, self.values):
            if not store:
                store.extend(mx.zeros(shape, mx.float32) for _ in range(self.n_blocks))
            else:
                for i, old in enumerate(store):
                    store[i] = mx.concatenate(
                        [
                            old[:, :, : self.pos],
                            mx.zeros((1, self.n_kv_heads, new_cap - self.pos, self.head_dim), mx.float32),
                        ],
                        axis=2,
                    )
        self.capacity = new_cap

    def arrays(self) -> list[mx.array]:
        """Every cache array (evaluated with each step's output)."""
        return [*self.keys, *self.values]


class ShardModel:
    """Runs a :class:`ShardParams` over a request's :class:`KVCache` (synchronous: call it in a worker
    thread, one forward at a time).

    Decode steps (one token) run one ``mx.compile``d function for the whole shard: embedding lookup, every
    block and the head in a single traced graph with fixed shapes per cache capacity. The position is an
    array input: RoPE takes it as ``offset``, the cache write is a ``slice_update`` at it, and attention
    covers the whole capacity under a mask built from it, so nothing is retraced from one token to the next
    (only when the cache grows, every ``cache_step`` positions). Prompts run eagerly.
    """

    def __init__(
        self, config: ModelConfig, params: ShardParams, *, is_first: bool, is_last: bool, compile: bool = True
    ) -> None:
        import mlx.core as mx

        self.config, self.params = config, params
        self.is_first, self.is_last = is_first, is_last
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self._step: Callable[..., tuple[mx.array, list[mx.array], list[mx.array]]] | None = (
            mx.compile(self._decode) if compile else self._decode
        )

    def close(self) -> None:
        """Drop the compiled step, which refers back to this model: without that reference cycle the
        weights are freed as soon as the last reference to the model goes, not at the next garbage
        collection (measured: 5 reloads without it left 1343 MB of MLX arrays alive for 538 MB of weights)."""
        self._step = None

    def new_cache(self, step: int, max_len: int) -> KVCache:
        """An empty cache for one request."""
        c = self.config
        return KVCache(len(self.params.blocks), c.n_kv_heads, c.head_dim, step, max_len)

    def _qkv(self, h: mx.array, b: Block, offset: int | mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Normed projections of ``h`` ``(T, hidden)`` as ``(1, heads, T, head_dim)``, q and k rotated."""
        import mlx.core as mx

        c = self.config
        t = h.shape[0]
        nh, nkv, hd = c.n_heads, c.n_kv_heads, c.head_dim
        qkv = b.qkv(mx.fast.rms_norm(h, b.attn_norm, c.rms_norm_eps))
        if b.qkv_bias is not None:
            qkv = qkv + b.qkv_bias
        q = qkv[:, : nh * hd].reshape(t, nh, hd).transpose(1, 0, 2)[None]
        k = qkv[:, nh * hd : (nh + nkv) * hd].reshape(t, nkv, hd).transpose(1, 0, 2)[None]
        v = qkv[:, (nh + nkv) * hd :].reshape(t, nkv, hd).transpose(1, 0, 2)[None]
        freqs = self.params.freqs
        q = mx.fast.rope(q, hd, traditional=False, base=None, scale=1.0, offset=offset, freqs=freqs)
        k = mx.fast.rope(k, hd, traditional=False, base=None, scale=1.0, offset=offset, freqs=freqs)
        return q, k, v

    def _out(self, h: mx.array, att: mx.array, b: Block) -> mx.array:
        import mlx.core as mx

        c = self.config
        t = h.shape[0]
        h = h + b.o(att[0].transpose(1, 0, 2).reshape(t, c.n_heads * c.head_dim))
        x = mx.fast.rms_norm(h, b.ffn_norm, c.rms_norm_eps)
        g, u = b.gate_up.halves(x)
        return h + b.down(g * mx.sigmoid(g) * u)

    def _embed_in(self, x: mx.array) -> mx.array:
        if self.is_first:
            assert self.params.embed is not None
            return self.params.embed.rows(x)
        return x

    def _head(self, h: mx.array) -> mx.array:
        import mlx.core as mx

        p = self.params
        assert p.norm is not None and p.lm_head is not None
        return p.lm_head(mx.fast.rms_norm(h, p.norm, self.config.rms_norm_eps))

    def _decode(
        self, x: mx.array, pos: mx.array, keys: list[mx.array], values: list[mx.array]
    ) -> tuple[mx.array, list[mx.array], list[mx.array]]:
        """One token through the shard (traced by ``mx.compile``): ``pos`` is an int32 scalar array; the
        caches come back updated."""
        import mlx.core as mx

        c = self.config
        nh, nkv, hd = c.n_heads, c.n_kv_heads, c.head_dim
        n_qk = (nh + nkv) * hd
        h = self._embed_in(x)
        capacity = keys[0].shape[2]
        mask = mx.where(mx.arange(capacity) <= pos, 0.0, -mx.inf).astype(mx.float32)
        start = pos.reshape(1)
        # RoPE factors of this position, once for every block: rotate-half on a (..., 2, hd/2) view is
        # x * [cos, cos] + x[..., ::-1, :] * [-sin, sin], which the compiled graph fuses into one kernel
        # (measured: 30 mx.fast.rope calls 0.69 ms, this 0.23 ms)
        angle = pos.astype(mx.float32) / self.params.freqs
        cos, sin = mx.cos(angle), mx.sin(angle)
        cos2, sin2 = mx.stack([cos, cos]), mx.stack([-sin, sin])
        new_keys, new_values = [], []
        for b, kc, vc in zip(self.params.blocks, keys, values, strict=True):
            # one row: (1, heads, 1, hd) is a plain reshape, and q and k rotate together
            qkv = b.qkv(mx.fast.rms_norm(h, b.attn_norm, c.rms_norm_eps))
            if b.qkv_bias is not None:
                qkv = qkv + b.qkv_bias
            halves = qkv[:, :n_qk].reshape(1, nh + nkv, 1, 2, hd // 2)
            qk = (halves * cos2 + halves[..., ::-1, :] * sin2).reshape(1, nh + nkv, 1, hd)
            kc = mx.slice_update(kc, qk[:, nh:], start, axes=(2,))
            vc = mx.slice_update(vc, qkv[:, n_qk:].reshape(1, nkv, 1, hd), start, axes=(2,))
            att = mx.fast.scaled_dot_product_attention(qk[:, :nh], kc, vc, scale=self.scale, mask=mask)
            h = h + b.o(att.reshape(1, nh * hd))
            g, u = b.gate_up.halves(mx.fast.rms_norm(h, b.ffn_norm, c.rms_norm_eps))
            h = h + b.down(g * mx.sigmoid(g) * u)
            new_keys.append(kc)
            new_values.append(vc)
        return (self._head(h) if self.is_last else h), new_keys, new_values

    def _decode_rows(self, x: mx.array, caches: list[KVCache]) -> mx.array:
        """One position of each of ``B`` requests (row ``r`` belongs to ``caches[r]``, at its own position),
        eagerly: every product runs once over the ``(B, hidden)`` rows, attention row by row over the
        row's own cache. Writes each row's key and value into its cache."""
        import mlx.core as mx

        c = self.config
        nh, nkv, hd = c.n_heads, c.n_kv_heads, c.head_dim
        n_qk = (nh + nkv) * hd
        h = self._embed_in(x)
        rows = h.shape[0]
        positions = [cache.pos for cache in caches]
        # RoPE factors of each row's position, rotate-half as in the decode graph: (B, 1, 2, hd/2)
        angle = mx.array(positions, dtype=mx.float32)[:, None] / self.params.freqs[None, :]
        cos, sin = mx.cos(angle), mx.sin(angle)
        cos2, sin2 = mx.stack([cos, cos], axis=1)[:, None], mx.stack([-sin, sin], axis=1)[:, None]
        for li, b in enumerate(self.params.blocks):
            qkv = b.qkv(mx.fast.rms_norm(h, b.attn_norm, c.rms_norm_eps))
            if b.qkv_bias is not None:
                qkv = qkv + b.qkv_bias
            halves = qkv[:, :n_qk].reshape(rows, nh + nkv, 2, hd // 2)
            qk = (halves * cos2 + halves[..., ::-1, :] * sin2).reshape(rows, nh + nkv, 1, hd)
            v = qkv[:, n_qk:].reshape(rows, nkv, 1, hd)
            atts = []
            for r, (cache, pos) in enumerate(zip(caches, positions, strict=True)):
                keys, values = cache.keys[li], cache.values[li]
                keys[:, :, pos : pos + 1] = qk[r : r + 1, nh:]
                values[:, :, pos : pos + 1] = v[r : r + 1]
                cache.keys[li], cache.values[li] = keys, values
                att = mx.fast.scaled_dot_product_attention(
                    qk[r : r + 1, :nh], keys[:, :, : pos + 1], values[:, :, : pos + 1], scale=self.scale
                )
                atts.append(att.reshape(1, nh * hd))
            h = h + b.o(mx.concatenate(atts, axis=0))
            g, u = b.gate_up.halves(mx.fast.rms_norm(h, b.ffn_norm, c.rms_norm_eps))
            h = h + b.down(g * mx.sigmoid(g) * u)
        return self._head(h) if self.is_last else h

    def _prefill(self, x: mx.array, cache: KVCache, pos: int, all_logits: bool) -> mx.array:
        import mlx.core as mx

        h = self._embed_in(x)
        end = pos + h.shape[0]
        for li, b in enumerate(self.params.blocks):
            q, k, v = self._qkv(h, b, pos)
            keys, values = cache.keys[li], cache.values[li]
            keys[:, :, pos:end] = k
            values[:, :, pos:end] = v
            cache.keys[li], cache.values[li] = keys, values
            att = mx.fast.scaled_dot_product_attention(
                q,
                keys[:, :, :end],
                values[:, :, :end],
                scale=self.scale,
                mask="causal" if h.shape[0] > 1 else None,
            )
            h = self._out(h, att, b)
        if self.is_last:
            h = self._head(h if all_logits else h[-1:])
        return h

    def forward(self, cache: KVCache, x: np.ndarray, all_logits: bool) -> np.ndarray:
        """Run the shard over ``x`` (int ids on the first shard, float32 hidden states otherwise) at the
        cache's next positions; returns float32 hidden states, or logits on the last shard."""
        import mlx.core as mx

        t = x.shape[0]
        cache.reserve(t)
        pos = cache.pos
        inp = mx.array(x.astype(np.int32) if self.is_first else x)
        if t == 1:
            keys, values = cache.keys, cache.values
            cache.keys, cache.values = [], []  # drop our references: the updates may reuse the buffers
            try:
                if self._step is None:
                    raise RuntimeError("this mlx shard was closed")
                h, keys, values = self._step(inp, mx.array(pos, dtype=mx.int32), keys, values)
            finally:
                cache.keys, cache.values = keys, values
            del keys, values
        else:
            h = self._prefill(inp, cache, pos, all_logits)
        mx.eval(h, *cache.arrays())
        cache.pos = pos + t
        out = np.array(h, copy=True)
        if out.dtype != np.float32:
            out = out.astype(np.float32)
        return out[0] if self.is_last and not all_logits else out

    def forward_steps(self, caches: list[KVCache], x: np.ndarray) -> np.ndarray:
        """One position for each of ``B`` requests at once (a batched decode step): ``x`` is ``(B,)`` ids or
        ``(B, hidden)`` hidden states, row ``b`` belonging to ``caches[b]`` (distinct requests). Returns
        ``(B, hidden)`` hidden states, or ``(B, vocab)`` logits on the last shard. Every cache makes room
        before anything is computed (``ValueError`` on overflow, no position moved)."""
        import mlx.core as mx

        for cache in caches:
            cache.reserve(1)
        inp = mx.array(x.astype(np.int32) if self.is_first else x)
        h = self._decode_rows(inp, caches)
        mx.eval(h, *(a for cache in caches for a in cache.arrays()))
        for cache in caches:
            cache.pos += 1
        out = np.array(h, copy=True)
        return out if out.dtype == np.float32 else out.astype(np.float32)
