"""A shard whose matrices stay as the GGUF stores them: products on onnxruntime's 4-/8-bit kernels.

Same interface and same attention, RoPE and KV cache as :class:`exo_engine_numpy.shard.NumpyShard` (the
float32 path); each block runs as two :mod:`exo_engine_numpy.ort_graphs` graphs around the attention. A
prompt, a lone decode step and a batch of steps of several requests all take the one path
(:func:`quant_block`): the graphs take any number of rows, attention runs per request.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from exo_core.models.config import ModelConfig
from exo_core.models.rope import rope_inv_freq
from exo_core.models.source import ModelSource, ensure_layers, load_config, open_weights
from exo_core.models.weights import RowLookup, WeightReader, names_for_shard
from exo_engine_numpy.blas_threads import one_blas_thread
from exo_engine_numpy.ggml_blocks import Blocks, decode, quantize_8bit
from exo_engine_numpy.heap import HeapGrowth
from exo_engine_numpy.layers import F32, RopeTable, attend_rows, attend_steps, causal_mask
from exo_engine_numpy.ort_graphs import Graph, GraphBuilder, Product, warm_runtime
from exo_engine_numpy.shard import KVCache, ShardRange

log = logging.getLogger(__name__)

#: GGML types held as floats (F32, F16, BF16): float32 ``MatMul`` unless 8-bit blocks are forced
FLOAT_TYPES = (0, 1, 30)
MATRICES = ("q", "k", "v", "o", "gate", "up", "down")


def holds_quantized(source: ModelSource) -> bool:
    """Whether the model's block matrices are stored quantized (what ``--numpy-weights auto`` checks)."""
    if source.format != "gguf":
        return False
    reader = open_weights(source)
    stored = reader.stored("layers.0.q")
    return stored is not None and stored.qtype not in FLOAT_TYPES


@dataclass
class QuantLayer:
    """One block: ``qkv(x)`` -> ``(rows, (n_heads + 2*n_kv_heads) * head_dim)``, queries pre-scaled by
    ``1/sqrt(head_dim)``; ``rest(x, att)`` -> the block's output residual ``(rows, hidden)``."""

    qkv: Graph
    rest: Graph

    @property
    def nbytes(self) -> int:
        return self.qkv.nbytes + self.rest.nbytes


class QuantWeights:
    """Reads one shard's matrices as :class:`Product` s: exact blocks for the types
    :mod:`exo_engine_numpy.ggml_blocks` maps, float32 for float tensors, 8-bit blocks made at load for the
    rest (and for float tensors when ``force`` is set)."""

    def __init__(self, reader: WeightReader, *, force: bool) -> None:
        self.reader = reader
        self.force = force
        self.requantized: list[str] = []

    def product(self, name: str, *, row_scale: float = 1.0) -> Product:
        """Matrix ``name`` with its rows multiplied by ``row_scale`` (the attention scale of q)."""
        stored = self.reader.stored(name)
        quantized = stored is not None and stored.qtype not in FLOAT_TYPES
        blocks: Blocks | None = None
        if stored is not None and quantized:
            blocks = decode(stored.raw, stored.qtype)
            if blocks is not None and stored.row_order is not None:
                blocks = blocks.take_rows(stored.row_order)
        if blocks is None and (self.force or quantized):
            self.requantized.append(name)
            blocks = quantize_8bit(self.reader.get(name))
        if blocks is None:
            w = self.reader.get(name)
            return Product(w * F32(row_scale) if row_scale != 1.0 else w)
        if row_scale != 1.0:
            blocks.scale = blocks.scale * F32(row_scale)
            if blocks.offset is not None:
                blocks.offset = blocks.offset * F32(row_scale)
        return Product(blocks)


def build_layer(weights: QuantWeights, cfg: ModelConfig, i: int, wanted: set[str]) -> QuantLayer:
    """The two graphs of block ``i``."""
    p = f"layers.{i}."
    get = weights.reader.get
    scale = 1.0 / math.sqrt(cfg.head_dim)
    hidden, n_att = cfg.hidden_size, cfg.n_heads * cfg.head_dim
    n_qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim

    g = GraphBuilder(f"block{i}.qkv")
    h = g.rms_norm("x", get(p + "attn_norm"), cfg.rms_norm_eps)
    qkv = g.linear(
        h, [weights.product(p + "q", row_scale=scale), weights.product(p + "k"), weights.product(p + "v")]
    )
    if p + "q_bias" in wanted:
        bias = np.concatenate([get(p + "q_bias") * F32(scale), get(p + "k_bias"), get(p + "v_bias")])
        qkv = g.op("Add", [qkv, g.const("bias", bias.astype(F32))])[0]
    qkv_graph = g.session([("x", hidden)], [(qkv, n_qkv)])

    g = GraphBuilder(f"block{i}.rest")
    x2 = g.op("Add", ["x", g.linear("att", [weights.product(p + "o")])])[0]
    h2 = g.rms_norm(x2, get(p + "ffn_norm"), cfg.rms_norm_eps)
    gu = g.linear(h2, [weights.product(p + "gate"), weights.product(p + "up")])
    gate, up = g.op(
        "Split",
        [gu, g.const("split", np.array([cfg.intermediate_size, cfg.intermediate_size], np.int64))],
        2,
        axis=-1,
    )
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])[0]])[0], up])[0]
    out = g.op("Add", [x2, g.linear(act, [weights.product(p + "down")])])[0]
    rest_graph = g.session([("x", hidden), ("att", n_att)], [(out, hidden)])
    return QuantLayer(qkv_graph, rest_graph)


def build_head(weights: QuantWeights, cfg: ModelConfig, head_name: str) -> Graph:
    """``RMSNorm(x) @ head.T``: ``(rows, hidden)`` -> ``(rows, vocab)`` logits."""
    g = GraphBuilder("head")
    h = g.rms_norm("x", weights.reader.get("norm"), cfg.rms_norm_eps)
    logits = g.linear(h, [weights.product(head_name)])
    return g.session([("x", cfg.hidden_size)], [(logits, cfg.vocab_size)])


def quant_block(
    x: np.ndarray,
    layer: QuantLayer,
    cfg: ModelConfig,
    k_caches: list[np.ndarray],
    v_caches: list[np.ndarray],
    positions: list[int],
    cos2: np.ndarray,
    sin2: np.ndarray,
) -> np.ndarray:
    """One block over ``x`` ``(rows, hidden)``; returns the new residual rows.

    Either one request's consecutive positions (``len(k_caches) == 1``, a prompt or a lone step starting at
    ``positions[0]``) or one position of each of ``rows`` requests (a batched decode step).
    """
    qkv = layer.qkv(x)
    if len(k_caches) == 1 and x.shape[0] > 1:
        mask = causal_mask(positions[0], x.shape[0])
        att = attend_rows(qkv, cfg, k_caches[0], v_caches[0], positions[0], cos2, sin2, mask)
    else:
        att = attend_steps(qkv, cfg, k_caches, v_caches, positions, cos2, sin2)
    return layer.rest(x, att)


class QuantShard(ShardRange):
    """A loaded shard on quantized weights; the interface of :class:`~exo_engine_numpy.shard.NumpyShard`.

    Args:
        force: quantize float and unmapped matrices to 8-bit blocks (``--numpy-weights quantized``)
            instead of keeping float matrices in float32.
    """

    def __init__(self, source: ModelSource, first: int, last: int, *, force: bool = False) -> None:
        self.source = source
        self.config = cfg = load_config(source)
        cfg.check_layer_range(first, last)
        self.first, self.last = first, last
        started = time.perf_counter()
        ensure_layers(source, first, last)
        reader = open_weights(source)
        wanted = set(names_for_shard(cfg, reader.names(), first, last))
        missing = [f"layers.{i}.{m}" for i in range(first, last + 1) for m in MATRICES]
        missing = [n for n in missing if n not in wanted]
        if missing:
            raise ValueError(f"model {source.model_id} lacks tensors {', '.join(missing[:3])}")
        weights = QuantWeights(reader, force=force)
        self.head: Graph | None = None
        warm_runtime()
        with HeapGrowth() as grown:  # what onnxruntime keeps of the weights, its packing included
            self.layers = [build_layer(weights, cfg, i, wanted) for i in range(first, last + 1)]
            if self.is_last:
                self.head = build_head(weights, cfg, "lm_head" if "lm_head" in wanted else "embed")
        #: bytes the kernels hold for the weights: measured where the heap can be (at least what they were
        #: handed), else what they were handed
        self.kernel_nbytes = max(self.input_nbytes(), grown.bytes or 0)
        self.embed: RowLookup | None = None
        self.embed_nbytes = 0
        if self.is_first:
            self.embed = reader.rows("embed")
            # a tied embedding this shard also holds as its head is counted once (the head's blocks)
            tied = self.head is not None and "lm_head" not in wanted
            self.embed_nbytes = 0 if tied else self.embed.nbytes
        inv_freq = rope_inv_freq(cfg, reader.get("rope_freqs") if "rope_freqs" in wanted else None)
        self.rope = RopeTable(inv_freq, min(1024, cfg.context_length))
        reader.release()  # the kernels hold their own copies; an embedding lookup maps in only its rows
        if weights.requantized:
            log.warning(
                "%d matrices of %s quantized to 8-bit blocks at load (e.g. %s): no exact kernel for "
                "their type",
                len(weights.requantized),
                source.model_id,
                weights.requantized[0],
            )
        log.info(
            "loaded %s layers %d..%d in %.2f s: the kernels hold %.1f MB for %.1f MB of quantized weights",
            source.model_id,
            first,
            last,
            time.perf_counter() - started,
            self.kernel_nbytes / 1e6,
            self.input_nbytes() / 1e6,
        )

    def input_nbytes(self) -> int:
        """Bytes of the arrays handed to the kernels (codes, float32 scales and offsets, norms)."""
        total = sum(layer.nbytes for layer in self.layers)
        return total + (self.head.nbytes if self.head is not None else 0)

    def nbytes(self) -> int:
        """Bytes the kernels hold for the weights (:mod:`exo_engine_numpy.heap`), plus the embedding
        table a first shard reads."""
        return self.kernel_nbytes + self.embed_nbytes

    def forward(self, cache: KVCache, x: np.ndarray, all_logits: bool) -> np.ndarray:
        """Run the shard over ``x`` (ids or hidden states) at the cache's next positions."""
        h = self._hidden(x)
        t = h.shape[0]
        cache.reserve(t)
        pos = cache.pos
        cos2, sin2 = self.rope.get(pos, t)
        with one_blas_thread():
            for li, layer in enumerate(self.layers):
                h = quant_block(h, layer, self.config, [cache.k[li]], [cache.v[li]], [pos], cos2, sin2)
            cache.pos = pos + t
            if not self.is_last:
                return h
            logits = self._logits(h if all_logits else h[-1:])
        return logits if all_logits else logits[0]

    def forward_steps(self, caches: list[KVCache], x: np.ndarray) -> np.ndarray:
        """One position for each of ``B`` requests at once; see ``NumpyShard.forward_steps``."""
        for cache in caches:
            cache.reserve(1)
        h = self._hidden(x)
        positions = [cache.pos for cache in caches]
        cos2, sin2 = self.rope.at(positions)
        with one_blas_thread():
            for li, layer in enumerate(self.layers):
                ks = [cache.k[li] for cache in caches]
                vs = [cache.v[li] for cache in caches]
                h = quant_block(h, layer, self.config, ks, vs, positions, cos2, sin2)
            for cache in caches:
                cache.pos += 1
            return self._logits(h) if self.is_last else h

    def _hidden(self, x: np.ndarray) -> np.ndarray:
        if self.is_first:
            assert self.embed is not None
            x = self.embed(x)
        return np.ascontiguousarray(x, dtype=F32)

    def _logits(self, rows: np.ndarray) -> np.ndarray:
        assert self.head is not None
        return self.head(rows)
