"""The inference-engine protocol every engine plugin implements.

An engine holds one contiguous range of a model's layers (a *shard*) and runs it for many requests, each
with its own KV cache. Activations between shards are engine-neutral float32 NumPy arrays, so shards of
different engines chain in one ring. Engines are built by the factory registered through
``exo_register_engine`` (``factory(ctx: ComponentContext) -> InferenceEngine``); they do heavy work in worker
threads (``anyio.to_thread.run_sync``) so the event loop keeps serving.

Flow of one request over shards ``A`` (layers 0..k) and ``B`` (k+1..n-1)::

    h = await A.forward(rid, np.array(prompt_ids))          # (T, hidden) float32
    logits = await B.forward(rid, h)                        # (vocab,) float32, last position
    ... then one token at a time: A.forward(rid, np.array([tok])) -> B.forward(rid, h) ...
    await A.free(rid); await B.free(rid)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from exo_core.models.config import ModelConfig
    from exo_core.models.source import ModelSource


def threads_per_pass(env: Mapping[str, str] | None = None) -> int | None:
    """The threads one forward pass may use, from ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` (a node
    sharing its machine runs with 1); ``None`` when neither is a positive integer (every core).

    The stage runner sizes its compute slots by it and engines with their own thread pool size it by it.
    """
    env = os.environ if env is None else env
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = env.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


@dataclass(frozen=True)
class ShardInfo:
    """The layer range an engine holds.

    Attributes:
        model_id: the model's id (``ModelSource.model_id``).
        first_layer / last_layer: inclusive range of transformer blocks.
        n_layers: the model's total block count.
    """

    model_id: str
    first_layer: int
    last_layer: int
    n_layers: int

    @property
    def is_first(self) -> bool:
        """This shard takes token ids (it holds the embedding)."""
        return self.first_layer == 0

    @property
    def is_last(self) -> bool:
        """This shard returns logits (it holds the final norm and output head)."""
        return self.last_layer == self.n_layers - 1


@dataclass(frozen=True)
class MemoryUsage:
    """Bytes an engine holds: ``weights`` for the loaded shard, ``kv_cache`` over every live request."""

    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        """``weights + kv_cache``."""
        return self.weights + self.kv_cache


@runtime_checkable
class InferenceEngine(Protocol):
    """A shard runner. All methods are safe to call from the event loop; heavy work runs in threads.

    Calls for one request id are sequential (the orchestration awaits each forward before the next);
    calls for different requests may overlap.
    """

    async def load(self, source: ModelSource, first_layer: int, last_layer: int, n_layers_total: int) -> None:
        """Load layers ``first_layer..last_layer`` (inclusive) of ``source``, plus the embedding if
        ``first_layer == 0`` and the final norm and output head if ``last_layer == n_layers_total - 1``.

        Loading the shard already loaded is a no-op; loading another shard replaces it and drops every KV
        cache. Raises ``ValueError`` for a bad range and ``exo_core.models.errors.ModelError`` for bad files.
        """

    async def forward(self, request_id: str, x: np.ndarray, *, all_logits: bool = False) -> np.ndarray:
        """Run the loaded layers over the next positions of ``request_id``.

        Args:
            request_id: key of the KV cache; a new id starts at position 0.
            x: on the first shard, int token ids of shape ``(T,)``; otherwise float32 hidden states
                ``(T, hidden_size)`` from the previous shard.
            all_logits: on the last shard, return logits for every position instead of the last only.

        Returns:
            float32 hidden states ``(T, hidden_size)``, or on the last shard logits ``(vocab,)``
            (``(T, vocab)`` with ``all_logits``).

        Raises:
            RuntimeError: nothing is loaded; ValueError: bad input shape/dtype or context overflow.
        """

    async def free(self, request_id: str) -> None:
        """Drop the KV cache of ``request_id`` (unknown ids are ignored)."""

    def position(self, request_id: str) -> int:
        """How many positions ``request_id`` has cached (0 if unknown)."""

    def shard(self) -> ShardInfo | None:
        """The loaded layer range, or ``None`` before :meth:`load`."""

    def memory(self) -> MemoryUsage:
        """Bytes held by weights and by KV caches right now."""


@runtime_checkable
class BatchingEngine(InferenceEngine, Protocol):
    """An engine that can also run one position of several requests in one pass (optional).

    A decode step reads every weight of the shard for a single token, so it is bound by memory bandwidth;
    running the steps of ``B`` concurrent requests as one ``(B, hidden)`` pass reads the weights once for
    all of them. The node's stage runner batches the single-position forwards that are waiting for a compute
    slot on the same engine (see ``exo_core.orchestration.batching``) when the engine has this method;
    engines without it get one :meth:`InferenceEngine.forward` call per step. An engine whose passes cannot
    overlap (they run on one thread, say) may also set an int attribute ``concurrent_passes``: the node then
    runs at most that many of its batched passes at once, and the steps that wait form one larger batch.
    """

    async def forward_batch(self, steps: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """Run one position for each ``(request_id, x)`` of ``steps``, as :meth:`forward` would one by one.

        Args:
            steps: distinct request ids, each with a one-position input: token ids ``(1,)`` on the first
                shard, hidden states ``(1, hidden_size)`` otherwise.

        Returns:
            per step, in order: hidden states ``(1, hidden_size)`` or, on the last shard, logits ``(vocab,)``.

        Raises:
            RuntimeError: nothing is loaded; ValueError: a bad input, a repeated request id, an input of
            more than one position, or a context overflow, raised before any cache changes (the caller
            may then run the steps one by one to find which one is at fault).
        """


def check_steps(
    steps: Sequence[tuple[str, np.ndarray]], config: ModelConfig, *, is_first: bool
) -> np.ndarray:
    """Validate the inputs of a ``forward_batch`` and stack them: ``(B,)`` ids or ``(B, hidden)`` float32."""
    import numpy as np

    if not steps:
        raise ValueError("forward_batch needs at least one step")
    ids = [rid for rid, _ in steps]
    if len(set(ids)) != len(ids):
        raise ValueError("forward_batch got the same request id twice")
    rows = [check_input(x, config, is_first=is_first) for _, x in steps]
    for row in rows:
        if row.shape[0] != 1:
            raise ValueError(f"forward_batch takes one position per request, got {row.shape[0]}")
    return np.concatenate(rows, axis=0)


def check_input(x: np.ndarray, config: ModelConfig, *, is_first: bool) -> np.ndarray:
    """Validate a ``forward`` input for a shard, as every engine must.

    Returns int64 token ids ``(T,)`` for a first shard, float32 C-contiguous hidden states ``(T, hidden)``
    otherwise. Raises ``ValueError`` naming what is wrong (empty input, wrong shape or dtype, token ids
    outside the vocabulary).
    """
    import numpy as np

    x = np.asarray(x)
    if is_first:
        if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(
                f"first shard expects a non-empty 1-D array of token ids, got {x.dtype} {x.shape}"
            )
        if int(x.min()) < 0 or int(x.max()) >= config.vocab_size:
            raise ValueError(f"token id out of range 0..{config.vocab_size - 1}")
        return x.astype(np.int64, copy=False)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != config.hidden_size:
        raise ValueError(f"expected hidden states of shape (T, {config.hidden_size}), got {x.shape}")
    if x.dtype not in (np.float32, np.float16):
        raise ValueError(f"hidden states must be float32 (or float16), got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)
