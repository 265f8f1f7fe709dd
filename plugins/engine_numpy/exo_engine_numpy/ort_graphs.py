"""The quantized path's products, norms and residuals as small onnxruntime graphs.

A block runs as two graphs, with attention (RoPE, KV cache, softmax) in NumPy between them, exactly as on the
float32 path (:mod:`exo_engine_numpy.layers`):

* ``qkv``: ``RMSNorm(x) @ [q; k; v]`` (+ bias);
* ``rest``: ``x2 = x + att @ o``, then ``x2 + down(SiLU(gate(RMSNorm(x2))) * up(RMSNorm(x2)))``.

The last shard adds a ``head`` graph, ``RMSNorm(x) @ head``. Every graph maps ``(rows, in)`` to
``(rows, out)`` with rows independent, so one graph serves a prompt, a lone decode step and a batch of steps.

A product is onnxruntime's contrib op ``MatMulNBits`` (``com.microsoft``) over the GGUF blocks as
:mod:`exo_engine_numpy.ggml_blocks` decodes them, with ``accuracy_level=4``: activations are quantized to 8
bits per block inside the kernel (as llama.cpp does) and multiplied on int8 dot products (AVX-512 VNNI,
AVX2, NEON), which measured ~2.5x faster here than the float32 products of the same matrices. A per-block
offset (Q4_1's and the K-quants' mins) is kept out of the kernel as a float32 term,
``offset @ blocksum(x)`` over the sums of the int8-rounded activations, as llama.cpp's Q4_1 dot product
takes them (:meth:`GraphBuilder.block_sums`): ``MatMulNBits`` with float zero points leaves the fast path
(50x slower here).
Float matrices (F16, BF16, F32 tensors of a quantized file) are float32 ``MatMul``.

Sessions share one process-wide intra-op thread pool (:func:`configure_runtime`), sized like the BLAS pool.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from exo_core.engine import threads_per_pass
from exo_engine_numpy.ggml_blocks import Blocks

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

F32 = np.float32
#: onnxruntime's int8-activation compute type for ``MatMulNBits``
ACCURACY_INT8 = 4
OPSET = 17
#: graph rewrites left out: MatMul + Add as one Gemm took 730 us against 300 us for the two on a 104-row
#: prompt's gate/up offset term (measured with onnxruntime's profiler)
DISABLED: list[str] = ["MatMulAddFusion"]

_threads_lock = threading.Lock()
_threads: int | None = None


def thread_count(env: Mapping[str, str] | None = None) -> int:
    """Intra-op threads: the threads a pass may use (:func:`exo_core.engine.threads_per_pass`), else every
    core."""
    return threads_per_pass(env) or os.cpu_count() or 1


def configure_runtime() -> int:
    """Set up what every session of this process shares, once: onnxruntime's global thread pool, and one
    CPU arena for the graphs' intermediate tensors (a per-session arena each keeps its largest prompt's
    buffers: +160 MB over 61 sessions measured; no arena at all costs a page fault per fresh 4 KiB of every
    intermediate: a prompt's prefill ~1.6x slower)."""
    global _threads
    with _threads_lock:
        if _threads is None:
            import onnxruntime as ort

            _threads = thread_count()
            try:
                ort.set_global_thread_pool_sizes(_threads, 1)
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                # kSameAsRequested: the arena grows by what a graph needs, not to the next power of two
                ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            except Exception as exc:  # created already by other code in this process: use what exists
                log.debug("onnxruntime's global thread pools / allocator exist already: %s", exc)
        return _threads


_warm = False
_warm_lock = threading.Lock()


def warm_runtime() -> None:
    """Set up onnxruntime's process-wide state once (:func:`configure_runtime`, its kernel registries, the
    quantized kernels' first use) by building and dropping a one-block graph, so that what a shard's load
    allocates afterwards is its own (:class:`exo_engine_numpy.heap.HeapGrowth`: ~11 MB otherwise)."""
    global _warm
    with _warm_lock:  # a second load waits until the first has finished warming up
        if _warm:
            return
        g = GraphBuilder("warm")
        blocks = Blocks(np.zeros((1, 32), np.uint8), np.ones((1, 1), F32), np.zeros((1, 1), F32), 4, 32)
        y = g.rms_norm("x", np.ones(32, F32), 1e-5)
        g.session([("x", 32)], [(g.linear(y, [Product(blocks)]), 1)])(np.ones((1, 32), F32))
        _warm = True


@dataclass
class Product:
    """One matrix for ``x @ W.T``: quantized :class:`Blocks` or a float32 ``(out, in)`` array."""

    weight: Blocks | np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        w = self.weight
        return w.codes.shape if isinstance(w, Blocks) else w.shape


def concat_rows(products: Sequence[Product]) -> list[Product]:
    """Fuse products over the same input into as few as possible: runs of quantized matrices with the same
    bits and block size become one (rows stacked), float ones one float matrix. Output order is kept."""
    out: list[Product] = []
    for p in products:
        prev = out[-1].weight if out else None
        w = p.weight
        if (
            isinstance(prev, Blocks)
            and isinstance(w, Blocks)
            and (prev.bits, prev.block) == (w.bits, w.block)
        ):
            out[-1] = Product(_stack_blocks(prev, w))
        elif isinstance(prev, np.ndarray) and isinstance(w, np.ndarray):
            out[-1] = Product(np.concatenate([prev, w], axis=0))
        else:
            out.append(p)
    return out


def _stack_blocks(a: Blocks, b: Blocks) -> Blocks:
    offset = None
    if a.offset is not None or b.offset is not None:
        offset = np.concatenate(
            [x.offset if x.offset is not None else np.zeros_like(x.scale) for x in (a, b)], axis=0
        )
    return Blocks(
        np.concatenate([a.codes, b.codes]), np.concatenate([a.scale, b.scale]), offset, a.bits, a.block
    )


@dataclass
class GraphBuilder:
    """Nodes and initializers of one graph; :meth:`session` compiles it. ``nbytes`` counts the weights."""

    name: str
    nodes: list[Any] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    nbytes: int = 0
    _n: int = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.fresh(stem)
        self.initializers[name] = np.ascontiguousarray(array)
        self.nbytes += int(array.nbytes)
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], n_out: int = 1, domain: str = "", **attrs: Any
    ) -> list[str]:
        from onnx import helper

        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain, **attrs))
        return outs

    def rms_norm(self, x: str, weight: np.ndarray, eps: float) -> str:
        """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis."""
        w = self.const("norm", np.asarray(weight, F32))
        return self.op("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=float(eps))[0]

    def linear(self, x: str, products: Sequence[Product]) -> str:
        """``x @ W.T`` for the products stacked by rows (each product over the whole input ``x``)."""
        outs = [self._product(x, p) for p in concat_rows(products)]
        return outs[0] if len(outs) == 1 else self.op("Concat", outs, axis=-1)[0]

    def _product(self, x: str, p: Product) -> str:
        w = p.weight
        if isinstance(w, np.ndarray):
            return self.op("MatMul", [x, self.const("w", np.ascontiguousarray(w.T, dtype=F32))])[0]
        n, k = w.codes.shape
        nb = k // w.block
        if w.bits == 4:
            packed = (w.codes[:, 0::2] | (w.codes[:, 1::2] << 4)).astype(np.uint8)
        else:
            packed = w.codes
        b = self.const("q", packed.reshape(n, nb, w.block * w.bits // 8))
        s = self.const("scale", w.scale.reshape(-1).astype(F32))
        y = self.op(
            "MatMulNBits",
            [x, b, s],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=w.bits,
            block_size=w.block,
            accuracy_level=ACCURACY_INT8,
        )[0]
        if w.offset is None:
            return y
        # per-block offsets: y += blocksum(x) @ offset.T, over the block sums of the int8-rounded x
        offset = self.const("offset", w.offset.T.astype(F32))
        return self.op("Add", [y, self.op("MatMul", [self.block_sums(x, k, w.block), offset])[0]])[0]

    def block_sums(self, x: str, k: int, block: int) -> str:
        """``(rows, k // block)`` sums of each ``block`` values of ``x`` ``(rows, k)``, taken as the kernel
        takes ``x``: rounded to 8 bits per block (``MatMulNBits`` over a block of ones, one row per block).

        llama.cpp multiplies a block's min by the sum of the block's *rounded* activations (Q8_1's ``s``),
        so the offset's rounding cancels the codes' as it does there; exact sums left Q4_1's greedy steps
        further from llama.cpp's (248 against 250 of 256 teacher-forced, docs/engines.md).
        """
        rows = self.op("Reshape", [x, self.const("shape", np.array([-1, block], np.int64))])[0]
        ones = np.full((1, 1, block // 2), 0x99, np.uint8)  # 4-bit codes 9 - zero point 8 = 1
        sums = self.op(
            "MatMulNBits",
            [rows, self.const("ones", ones), self.const("one", np.ones(1, F32))],
            domain="com.microsoft",
            K=block,
            N=1,
            bits=4,
            block_size=block,
            accuracy_level=ACCURACY_INT8,
        )[0]
        return self.op("Reshape", [sums, self.const("shape", np.array([-1, k // block], np.int64))])[0]

    def session(self, inputs: Sequence[tuple[str, int]], outputs: Sequence[tuple[str, int]]) -> Graph:
        """Compile with float32 inputs/outputs ``(name, width)`` of shape ``(rows, width)``.

        The weights reach onnxruntime as external initializers, without a serialized copy; onnxruntime
        copies them (and packs the quantized ones) while it builds the session, after which the builder
        drops its own arrays (a unit test checks that the session no longer reads them).
        """
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        def info(name: str, width: int) -> Any:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", width])

        # shapes and axes stay inline (shape inference reads them); weights go by reference
        external = {n: a for n, a in self.initializers.items() if a.dtype != np.int64}
        placeholders = [
            numpy_helper.from_array(a, n) for n, a in self.initializers.items() if n not in external
        ]
        for name, array in external.items():
            t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
            t.dims.extend(array.shape)
            t.data_location = TensorProto.EXTERNAL
            t.external_data.add(key="location", value="in-memory")
            placeholders.append(t)
        graph = helper.make_graph(
            self.nodes, self.name, [info(*i) for i in inputs], [info(*o) for o in outputs], placeholders
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
        )
        configure_runtime()
        opts = ort.SessionOptions()
        opts.use_per_session_threads = False
        opts.add_session_config_entry("session.use_env_allocators", "1")
        # weights in plain allocations of their own size, outside the arena
        opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in external.values()]
        opts.add_external_initializers(list(external), values)
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED
        )
        self.nodes, self.initializers = [], {}
        return Graph(sess, [i[0] for i in inputs], [o[0] for o in outputs], self.nbytes)


class Graph:
    """A compiled graph: ``graph(*arrays)`` runs it on float32 ``(rows, width)`` inputs in input order."""

    def __init__(
        self, session: onnxruntime.InferenceSession, inputs: list[str], outputs: list[str], nbytes: int
    ) -> None:
        self._session = session
        self._inputs = inputs
        self._outputs = outputs
        self.nbytes = nbytes

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = {n: np.ascontiguousarray(a, dtype=F32) for n, a in zip(self._inputs, arrays, strict=True)}
        out: np.ndarray = self._session.run(self._outputs, feeds)[0]
        return out
