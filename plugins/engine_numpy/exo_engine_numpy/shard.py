"""Loading one shard's weights and running its forward pass (synchronous; the engine calls it in threads)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from exo_core.models.config import ModelConfig
from exo_core.models.request_cache import check_room
from exo_core.models.rope import rope_inv_freq
from exo_core.models.source import ModelSource, ensure_layers, load_config, open_weights
from exo_core.models.weights import RowLookup, names_for_shard
from exo_engine_numpy.fused_weights import (
    LayerWeights,
    ShardWeights,
    WeightArena,
    fuse_layer,
    layer_floats,
    pack_layer,
)
from exo_engine_numpy.layers import (
    F32,
    RopeTable,
    attention_block,
    block_step,
    block_steps,
    causal_mask,
    few_rows_matmul,
    mlp_block,
    rms_norm,
)

log = logging.getLogger(__name__)


class KVCache:
    """Preallocated keys and values of one request on one shard, grown by doubling up to ``max_len``."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, initial: int, max_len: int) -> None:
        self.max_len = max_len
        cap = max(1, min(initial, max_len))
        self.k = np.zeros((n_layers, n_kv_heads, cap, head_dim), F32)
        self.v = np.zeros_like(self.k)
        self.pos = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by both arrays."""
        return int(self.k.nbytes + self.v.nbytes)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more positions (``ValueError`` past the context limit)."""
        check_room(self.pos, n, self.max_len)
        need = self.pos + n
        cap = self.k.shape[2]
        if need <= cap:
            return
        new_cap = min(self.max_len, max(need, 2 * cap))
        for attr in ("k", "v"):
            old = getattr(self, attr)
            grown = np.zeros((*old.shape[:2], new_cap, old.shape[3]), F32)
            grown[:, :, : self.pos] = old[:, :, : self.pos]
            setattr(self, attr, grown)


def load_shard_weights(source: ModelSource, first: int, last: int) -> ShardWeights:
    """Read, dequantize and fuse the tensors of layers ``first..last`` (+ embedding/norm/head as needed)."""
    config = load_config(source)
    config.check_layer_range(first, last)
    ensure_layers(source, first, last)
    reader = open_weights(source)
    available = reader.names()
    wanted = set(names_for_shard(config, available, first, last))

    def get(name: str) -> np.ndarray:
        if name not in wanted:
            raise ValueError(f"model {source.model_id} lacks tensor {name}")
        arr = reader.get(name)
        assert arr.dtype == F32, (name, arr.dtype)
        return arr

    # every block has the same shapes: size the arena from the first, then pack each block as it is read
    # (peak memory: the arena plus one unpacked block)
    layers = [_load_layer(get, wanted, config, first)]
    arena = WeightArena(layer_floats(layers[0]) * (last - first + 1))
    layers[0] = pack_layer(layers[0], arena)
    for i in range(first + 1, last + 1):
        layers.append(pack_layer(_load_layer(get, wanted, config, i), arena))
    out = ShardWeights(layers=layers)
    if last == config.n_layers - 1:
        out.norm = get("norm")
        # tied models: the embedding doubles as the output head (one array when this shard holds both)
        out.lm_head_t = np.ascontiguousarray(get("lm_head" if "lm_head" in wanted else "embed").T)
    if first == 0:
        if "lm_head" not in wanted and out.lm_head_t is not None:
            head = out.lm_head_t
            out.embed = RowLookup(head.T, lambda rows: rows, (head.shape[1], head.shape[0]))
            out.embed_shared = True
        else:
            out.embed = reader.rows("embed")
    out.inv_freq = rope_inv_freq(config, reader.get("rope_freqs") if "rope_freqs" in wanted else None)
    reader.release()  # everything is copied out; an embedding lookup maps in only the rows it reads
    return out


def _load_layer(
    get: Callable[[str], np.ndarray], wanted: set[str], config: ModelConfig, i: int
) -> LayerWeights:
    p = f"layers.{i}."
    bias = None
    if p + "q_bias" in wanted:
        bias = (get(p + "q_bias"), get(p + "k_bias"), get(p + "v_bias"))
    return fuse_layer(
        config,
        q=get(p + "q"),
        k=get(p + "k"),
        v=get(p + "v"),
        o=get(p + "o"),
        gate=get(p + "gate"),
        up=get(p + "up"),
        down=get(p + "down"),
        attn_norm=get(p + "attn_norm"),
        ffn_norm=get(p + "ffn_norm"),
        bias=bias,
    )


class ShardRange:
    """What both representations' shards share: the layer range of a model and its per-request caches."""

    config: ModelConfig
    first: int
    last: int

    @property
    def is_first(self) -> bool:
        return self.first == 0

    @property
    def is_last(self) -> bool:
        return self.last == self.config.n_layers - 1

    def new_cache(self, initial: int, max_len: int) -> KVCache:
        """An empty cache for one request."""
        c = self.config
        return KVCache(self.last - self.first + 1, c.n_kv_heads, c.head_dim, initial, max_len)


class NumpyShard(ShardRange):
    """A loaded shard: weights plus the math to run them over a request's cache."""

    def __init__(self, source: ModelSource, first: int, last: int) -> None:
        self.source = source
        self.config = load_config(source)
        self.first, self.last = first, last
        started = time.perf_counter()
        self.weights = load_shard_weights(source, first, last)
        self.rope = RopeTable(self.weights.inv_freq, min(1024, self.config.context_length))
        log.info(
            "loaded %s layers %d..%d (%.1f MB float32) in %.2f s",
            source.model_id,
            first,
            last,
            self.weights.nbytes() / 1e6,
            time.perf_counter() - started,
        )

    def nbytes(self) -> int:
        """Bytes of the weights held."""
        return self.weights.nbytes()

    def forward(self, cache: KVCache, x: np.ndarray, all_logits: bool) -> np.ndarray:
        """Run the shard over ``x`` (ids or hidden states) at the cache's next positions."""
        w, cfg = self.weights, self.config
        h = self._hidden(x)
        t = h.shape[0]
        cache.reserve(t)
        pos = cache.pos
        cos2, sin2 = self.rope.get(pos, t)
        if t == 1:  # decode: one residual vector updated in place, block by block
            row = h[0]
            for li, lw in enumerate(w.layers):
                block_step(row, lw, cfg, cache.k[li], cache.v[li], pos, cos2[0], sin2[0])
        else:
            mask = causal_mask(pos, t)
            for li, lw in enumerate(w.layers):
                h = attention_block(h, lw, cfg, cache.k[li], cache.v[li], pos, cos2, sin2, mask)
                h = mlp_block(h, lw, cfg)
        cache.pos = pos + t
        assert h.dtype == F32, h.dtype
        if not self.is_last:
            return h
        logits = self._logits(h if all_logits else h[-1:])
        return logits if all_logits else logits[0]

    def forward_steps(self, caches: list[KVCache], x: np.ndarray) -> np.ndarray:
        """One position for each of ``B`` requests at once (a batched decode step).

        ``x`` is ``(B,)`` token ids or ``(B, hidden)`` hidden states, row ``b`` belonging to ``caches[b]``
        (distinct requests). Returns ``(B, hidden)`` hidden states, or ``(B, vocab)`` logits on the last
        shard. Every cache is checked for room before anything is computed (``ValueError`` on overflow).
        """
        w, cfg = self.weights, self.config
        for cache in caches:
            cache.reserve(1)
        h = self._hidden(x)
        positions = [cache.pos for cache in caches]
        cos2, sin2 = self.rope.at(positions)
        for li, lw in enumerate(w.layers):
            ks = [cache.k[li] for cache in caches]
            vs = [cache.v[li] for cache in caches]
            block_steps(h, lw, cfg, ks, vs, positions, cos2, sin2)
        for cache in caches:
            cache.pos += 1
        return self._logits(h, few_rows_matmul) if self.is_last else h

    def _hidden(self, x: np.ndarray) -> np.ndarray:
        """The input rows as a private C-contiguous float32 array, which the decode paths update in place:
        the embedding rows of ids on the first shard (the lookup may return shared memory), else a copy of
        the hidden states."""
        if self.is_first:
            assert self.weights.embed is not None
            x = self.weights.embed(x)
        return np.array(x, dtype=F32, order="C")

    def _logits(
        self, rows: np.ndarray, matmul: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.matmul
    ) -> np.ndarray:
        """Final norm and output head over hidden-state rows: ``(R, vocab)``."""
        w = self.weights
        assert w.norm is not None and w.lm_head_t is not None
        logits = matmul(rms_norm(rows, w.norm, self.config.rms_norm_eps), w.lm_head_t)
        assert logits.dtype == F32, logits.dtype
        return logits
