"""Checks of a request before it is planned: what the API layer cannot know without the model.

- :func:`check_length`: a prompt with more characters than the context could hold, refused before it is
  tokenized (seconds of CPU and a gigabyte of memory otherwise, for a 400 at the end);
- :func:`checked_logit_bias`: ``logit_bias`` token ids inside the model's vocabulary;
- :func:`check_memory`: a plan gives no node more weights (as its engine holds them) than the memory it
  reports.
"""

from __future__ import annotations

from collections.abc import Mapping

from exo_core.api.backend import BackendError
from exo_core.orchestration.catalog import LoadedModel
from exo_core.topology.partition import NoCapacityError, NodeResources, Plan


def checked_logit_bias(bias: tuple[tuple[int, float], ...], vocab_size: int) -> tuple[tuple[int, float], ...]:
    """``bias`` if every token id is in the model's vocabulary, else a 400 naming ``logit_bias``.

    The API checks everything else; only here is the model (and so its vocabulary size) known.
    """
    for token, _ in bias:
        if not 0 <= token < vocab_size:
            raise BackendError(
                400,
                "invalid_request",
                f"logit_bias: token id {token} is out of range (the model has {vocab_size} tokens)",
                param="logit_bias",
            )
    return bias


def check_length(loaded: LoadedModel, chars: int, param: str) -> None:
    """Refuse, before tokenizing it, a text too long to fit the context whatever its tokens.

    A text of ``chars`` characters has at least ``chars / max_token_chars`` tokens; the bound is halved
    again for normalizers that fold several characters into one. Tokenizing megabytes takes seconds of CPU
    and a gigabyte of memory, all for a 400 at the end.
    """
    limit = loaded.config.context_length * loaded.tokenizer.max_token_chars * 2
    if chars > limit:
        raise BackendError(
            400,
            "context_length_exceeded",
            f"the prompt has {chars} characters, more than any {loaded.config.context_length}-token context "
            f"can hold ({limit} at most for this model's tokenizer)",
            param=param,
        )


def check_memory(
    plan: Plan,
    nodes: list[NodeResources],
    unit_bytes: float,
    head_layers: int,
    model: str,
    held_ratio: Mapping[str, float] | None = None,
) -> None:
    """Raise :class:`NoCapacityError` when a node of ``plan`` would hold more weights than the memory it
    reports (a node reporting 0 MB is not checked: unknown).

    A node's weights are its share of the stored bytes times ``held_ratio[node]``: what its engine holds per
    stored byte of this model, as the node measured it on a load and gossiped it (e.g. ~1.6 for the NumPy
    engine's quantized path, whose kernels pack the blocks with float32 scales). Unknown, or below 1, it
    counts as 1: an engine holds at least the stored weights.
    """
    memory = {n.node_id: n.memory_mb for n in nodes}
    ratios = held_ratio or {}
    for i, entry in enumerate(plan):
        units = entry.last_layer - entry.first_layer + 1 + (head_layers if i == len(plan) - 1 else 0)
        stored_mb = units * unit_bytes / 2**20
        ratio = max(1.0, ratios.get(entry.node_id, 1.0))
        need_mb = stored_mb * ratio
        have = memory.get(entry.node_id, 0)
        if have and need_mb > have:
            held = f", {stored_mb:.0f} MB stored x {ratio:.2f} as its engine holds them" if ratio > 1 else ""
            raise NoCapacityError(
                f"{model} does not fit: node {entry.node_id} would hold layers {entry.first_layer}.."
                f"{entry.last_layer}{' and the output head' if i == len(plan) - 1 else ''} "
                f"({need_mb:.0f} MB of weights{held}) but reports {have} MB of memory"
            )
