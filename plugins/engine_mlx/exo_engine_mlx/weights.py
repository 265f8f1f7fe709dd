"""Loading one shard's weights into MLX arrays, dense float32 or quantized.

Weights come from the shared readers (``exo_core.models``) as float32 ``(out, in)`` matrices with q/k rows in
Hugging Face order, one tensor at a time and only this shard's. Matrices are fused like the NumPy engine's
(``qkv`` = [q; k; v], ``gate_up`` = [gate; up]) so each block runs four large matmuls. With the quantized
representation each fused matrix is re-quantized with MLX's affine scheme at the bits and group size closest
to the source's (Q4_1 -> 4 bits, groups of 32: the same grid, so it is nearly lossless).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from exo_core.models.config import ModelConfig
from exo_core.models.rope import rope_inv_freq
from exo_core.models.source import ModelSource, ensure_layers, load_config, open_weights
from exo_core.models.weights import names_for_shard
from exo_engine_mlx.quant import QuantSpec, fits, gguf_affine, source_quant

if TYPE_CHECKING:
    import mlx.core as mx

log = logging.getLogger(__name__)

Representation = Literal["dense", "quantized"]
#: Quantization used when the quantized representation is asked for but the source is not quantized.
DEFAULT_QUANT = QuantSpec(bits=8, group_size=64)


#: dense matrices of at least this many bytes are cut in two and multiplied on two CPU streams at once
#: (gate_up 7 MB, down 3.5 MB and the head of the default model; qkv and o, 1-2 MB, lost more to the
#: streams' hand-off than they gained: see docs/engines.md)
SPLIT_MIN_BYTES = 3 * 1024 * 1024


@dataclass
class Linear:
    """A matrix ``W`` (``(out, in)``) applied as ``x @ W.T``.

    Dense float32 (``scales is None``): ``w`` is ``W.T``, shaped ``(in, out)`` and applied as ``x @ w``, kept
    in the memory layout that makes MLX's one-row (decode) product cheapest with MKL here: ``(in, out)``
    C-contiguous when ``out >= in`` (qkv, o, gate_up, the head: ~1.3-1.8x faster than the other layout,
    ``transposed``), else ``(out, in)`` C-contiguous as stored (down: ~1.3x faster that way), which ``w``
    then views transposed; see docs/engines.md. The view is made once at load, so a product is one
    primitive either way. Quantized keeps MLX's ``(out, in/pack)`` layout for ``mx.quantized_matmul``.

    A large dense matrix may be *split* (``w2`` set): ``w`` then holds the first half of the output features
    and ``w2`` the rest, and a product runs the two halves at once, the second on ``stream``, so both CPU
    cores stream weights. MKL runs a one-row product on one core at ~20 GB/s; two halves in parallel
    read ~1.3x faster. Each output is the same dot product either way, so the result is bit for bit the
    unsplit one.
    """

    w: mx.array
    scales: mx.array | None = None
    biases: mx.array | None = None
    bits: int = 0
    group_size: int = 0
    #: dense: ``w``'s memory is ``(in, out)`` C-contiguous (else a transposed view of ``(out, in)``)
    transposed: bool = False
    #: dense, split: the second half of the output features (like ``w``)
    w2: mx.array | None = None
    #: the stream ``w2``'s half runs on
    stream: mx.Stream | None = None

    @classmethod
    def dense(cls, w: np.ndarray, stream: mx.Stream | None = None) -> Linear:
        """A dense float32 :class:`Linear` over ``w`` ``(out, in)``, in the faster layout for its shape; split
        in two (the second half on ``stream``) when ``stream`` is given and ``w`` has at least
        :data:`SPLIT_MIN_BYTES`."""
        import mlx.core as mx

        transposed = w.shape[0] >= w.shape[1]

        def applied(rows: np.ndarray) -> mx.array:
            """``rows`` (``(out', in)``) as an ``(in, out')`` MLX array in the chosen memory layout."""
            if transposed:
                return mx.array(np.ascontiguousarray(rows.T))
            view = mx.array(np.ascontiguousarray(rows)).T
            mx.eval(view)  # a view of the (out', in) buffer, evaluated now rather than in every graph
            return view

        if stream is None or w.nbytes < SPLIT_MIN_BYTES or w.shape[0] < 2:
            return cls(applied(w), transposed=transposed)
        half = w.shape[0] // 2
        return cls(applied(w[:half]), transposed=transposed, w2=applied(w[half:]), stream=stream)

    def __call__(self, x: mx.array) -> mx.array:
        import mlx.core as mx

        if self.w2 is not None:
            return mx.concatenate(list(self.halves(x)), axis=-1)
        if self.scales is None:
            return x @ self.w
        return mx.quantized_matmul(
            x, self.w, self.scales, self.biases, transpose=True, group_size=self.group_size, bits=self.bits
        )

    def halves(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """The product's first and second half of output features (``gate`` and ``up`` of ``gate_up``): a
        split matrix's two products, at once and without joining them, else the product cut in two."""
        import mlx.core as mx

        if self.w2 is None:
            first, second = mx.split(self(x), 2, axis=-1)
            return first, second
        assert self.stream is not None
        y = x @ self.w
        with mx.stream(self.stream):
            y2 = x @ self.w2
        return y, y2

    def rows(self, ids: mx.array) -> mx.array:
        """Rows ``ids`` of ``W`` as float32 (the embedding lookup)."""
        import mlx.core as mx

        if self.scales is None:
            if self.w2 is None:
                return mx.take(self.w, ids, axis=1).T
            n = self.w.shape[1]
            first = mx.take(self.w, mx.minimum(ids, n - 1), axis=1).T
            second = mx.take(self.w2, mx.maximum(ids - n, 0), axis=1).T
            return mx.where((ids < n)[:, None], first, second)
        assert self.biases is not None
        return mx.dequantize(
            self.w[ids], self.scales[ids], self.biases[ids], group_size=self.group_size, bits=self.bits
        )

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays())

    def arrays(self) -> list[mx.array]:
        """Every array held."""
        return [a for a in (self.w, self.w2, self.scales, self.biases) if a is not None]


@dataclass
class Block:
    """One transformer block."""

    attn_norm: mx.array
    qkv: Linear
    qkv_bias: mx.array | None
    o: Linear
    ffn_norm: mx.array
    gate_up: Linear
    down: Linear

    @property
    def nbytes(self) -> int:
        arrays = [self.attn_norm, self.ffn_norm, *([self.qkv_bias] if self.qkv_bias is not None else [])]
        linears = (self.qkv, self.o, self.gate_up, self.down)
        return sum(int(a.nbytes) for a in arrays) + sum(m.nbytes for m in linears)


@dataclass
class ShardParams:
    """Everything a shard holds; ``freqs`` are RoPE periods (``1 / inv_freq``) for ``mx.fast.rope``."""

    blocks: list[Block]
    freqs: mx.array
    embed: Linear | None = None
    norm: mx.array | None = None
    lm_head: Linear | None = None
    representation: Representation = "dense"

    def nbytes(self) -> int:
        """Bytes of distinct arrays (a tied embedding/head counts once)."""
        total = sum(b.nbytes for b in self.blocks) + int(self.freqs.nbytes)
        if self.norm is not None:
            total += int(self.norm.nbytes)
        heads = {id(m): m.nbytes for m in (self.embed, self.lm_head) if m is not None}
        return total + sum(heads.values())

    def arrays(self) -> list[mx.array]:
        """Every array (to evaluate them once after loading)."""
        out: list[mx.array] = [self.freqs]
        linears = [m for m in (self.embed, self.lm_head) if m is not None]
        for b in self.blocks:
            out += [b.attn_norm, b.ffn_norm, *([b.qkv_bias] if b.qkv_bias is not None else [])]
            linears += [b.qkv, b.o, b.gate_up, b.down]
        for m in linears:
            out += m.arrays()
        if self.norm is not None:
            out.append(self.norm)
        return out


class _Loader:
    """Reads tensors of one shard and builds MLX :class:`Linear` matrices in the chosen representation."""

    def __init__(
        self,
        source: ModelSource,
        config: ModelConfig,
        first: int,
        last: int,
        representation: Representation,
        split_stream: mx.Stream | None = None,
    ) -> None:
        self.source, self.config, self.representation = source, config, representation
        self.split_stream = split_stream
        self.reader = open_weights(source)
        self.wanted = set(names_for_shard(config, self.reader.names(), first, last))

    def get(self, name: str) -> np.ndarray:
        if name not in self.wanted:
            raise ValueError(f"model {self.source.model_id} lacks tensor {name}")
        arr = self.reader.get(name)
        if arr.dtype != np.float32:
            raise ValueError(f"reader returned {arr.dtype} for {name}; expected float32")
        return arr

    def vector(self, name: str) -> mx.array:
        import mlx.core as mx

        return mx.array(self.get(name))

    def linear(self, names: list[str]) -> Linear:
        """The row-concatenation of ``names`` as one matrix."""
        import mlx.core as mx

        if self.representation == "quantized":
            exact = [gguf_affine(self.source, self.config, n) for n in names]
            if all(e is not None for e in exact) and len({e.spec for e in exact if e is not None}) == 1:
                parts = [e for e in exact if e is not None]
                spec = parts[0].spec

                def cat(arrays: list[np.ndarray]) -> mx.array:
                    return mx.array(arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0))

                return Linear(
                    cat([e.w for e in parts]),
                    cat([e.scales for e in parts]),
                    cat([e.biases for e in parts]),
                    spec.bits,
                    spec.group_size,
                )
        missing = [n for n in names if n not in self.wanted]
        if missing:
            raise ValueError(f"model {self.source.model_id} lacks tensor {missing[0]}")
        parts_f32 = [self.get(n) for n in names]
        w = parts_f32[0] if len(parts_f32) == 1 else np.concatenate(parts_f32, axis=0)
        del parts_f32
        if self.representation == "dense":
            return Linear.dense(w, self.split_stream)
        spec = self.quant_for(names[0], w.shape[1])
        wq, scales, biases = mx.quantize(mx.array(w), group_size=spec.group_size, bits=spec.bits)
        # float32 scales/biases: MLX's CPU quantized matmul is ~35x slower with float16 ones
        return Linear(wq, scales.astype(mx.float32), biases.astype(mx.float32), spec.bits, spec.group_size)

    def quant_for(self, name: str, in_features: int) -> QuantSpec:
        spec = source_quant(self.source, name) or DEFAULT_QUANT
        if not fits(spec, in_features):
            for group in (32, 64, 128):
                if in_features % group == 0:
                    return QuantSpec(spec.bits if spec.bits in (2, 3, 4, 5, 6, 8) else 8, group)
            raise ValueError(
                f"{name}: rows of {in_features} values cannot be quantized by MLX (groups 32/64/128)"
            )
        return spec

    def block(self, i: int) -> Block:
        p = f"layers.{i}."
        bias = None
        if p + "q_bias" in self.wanted:
            import mlx.core as mx

            bias = mx.array(np.concatenate([self.get(p + part) for part in ("q_bias", "k_bias", "v_bias")]))
        return Block(
            attn_norm=self.vector(p + "attn_norm"),
            qkv=self.linear([p + "q", p + "k", p + "v"]),
            qkv_bias=bias,
            o=self.linear([p + "o"]),
            ffn_norm=self.vector(p + "ffn_norm"),
            gate_up=self.linear([p + "gate", p + "up"]),
            down=self.linear([p + "down"]),
        )


def load_params(
    source: ModelSource,
    first: int,
    last: int,
    representation: Representation,
    on_block: Callable[[], None] | None = None,
    split_stream: mx.Stream | None = None,
) -> ShardParams:
    """Read layers ``first..last`` (+ embedding / final norm / head when first / last) into MLX arrays.

    Each block is evaluated as soon as it is built, so peak memory stays one block of float32 above the
    result; ``on_block`` runs after each. With ``split_stream``, large dense matrices are split in two and
    half of each product runs on that stream (see :class:`Linear`).
    """
    import mlx.core as mx

    config = load_config(source)
    config.check_layer_range(first, last)
    ensure_layers(source, first, last)
    loader = _Loader(source, config, first, last, representation, split_stream)
    blocks = []
    for i in range(first, last + 1):
        blocks.append(loader.block(i))
        mx.eval(*_block_arrays(blocks[-1]))
        if on_block is not None:
            on_block()
    rope = loader.get("rope_freqs") if "rope_freqs" in loader.wanted else None
    params = ShardParams(
        blocks=blocks, freqs=mx.array(1.0 / rope_inv_freq(config, rope)), representation=representation
    )
    if first == 0:
        params.embed = loader.linear(["embed"])
    if last == config.n_layers - 1:
        params.norm = loader.vector("norm")
        if "lm_head" in loader.wanted:
            params.lm_head = loader.linear(["lm_head"])
        else:  # tied: the embedding doubles as the output head (shared when this shard holds both)
            params.lm_head = params.embed if params.embed is not None else loader.linear(["embed"])
    mx.eval(*params.arrays())
    return params


def _block_arrays(b: Block) -> list[mx.array]:
    out = [b.attn_norm, b.ffn_norm, *([b.qkv_bias] if b.qkv_bias is not None else [])]
    for m in (b.qkv, b.o, b.gate_up, b.down):
        out += m.arrays()
    return out
