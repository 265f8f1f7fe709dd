"""Layer plans: which node runs which contiguous range of a model's layers.

The built-in ``ring-memory-weighted`` partitioner orders nodes by memory (largest first, ties broken by
node id), prefers an order in which consecutive nodes of the ring are directly connected, and gives each
node a contiguous range proportional to its memory (largest-remainder rounding, at least one layer each).
The same topology always yields the same plan. The node asks a partitioner for a plan over the model's
layers plus the output head counted as layers, and folds the head back onto the last node
(:func:`fold_head`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from exo_core.errors import ExoError

#: Above this many nodes the connectivity-preferring search falls back to a greedy walk.
_EXHAUSTIVE_MAX = 7


@dataclass(frozen=True)
class PlanEntry:
    """One hop of a plan: ``node_id`` runs layers ``first_layer..last_layer`` (inclusive)."""

    node_id: str
    first_layer: int
    last_layer: int

    @property
    def n_layers(self) -> int:
        return self.last_layer - self.first_layer + 1


Plan = tuple[PlanEntry, ...]


class NoCapacityError(ExoError):
    """No node can hold any layer (e.g. an empty cluster)."""


@dataclass(frozen=True)
class NodeResources:
    """What a partitioner needs to know of a node."""

    node_id: str
    memory_mb: int


class Partitioner(Protocol):
    """Maps nodes and their connections to a plan for a model of ``n_layers`` layers."""

    def plan(self, nodes: Sequence[NodeResources], edges: frozenset[frozenset[str]], n_layers: int) -> Plan:
        """Return a plan covering layers ``0..n_layers-1`` exactly once, in ring order."""
        ...


def _connected_pairs(order: Sequence[str], edges: frozenset[frozenset[str]]) -> tuple[int, int]:
    """(directly connected hidden-state hops along the path, 1 if the wrap-around hop is direct too).

    Path hops carry a hidden state every token; the wrap (last -> first) carries one token id, so it
    counts only to break ties.
    """
    path = sum(1 for a, b in itertools.pairwise(order) if frozenset((a, b)) in edges)
    wrap = int(len(order) > 2 and frozenset((order[-1], order[0])) in edges)
    return path, wrap


def ring_order(nodes: Sequence[NodeResources], edges: frozenset[frozenset[str]]) -> list[str]:
    """Memory order (largest first, then node id), rearranged to maximize directly connected neighbours.

    Among orders with the most directly connected hidden-state hops (then a direct wrap-around hop), the
    one closest to memory order (lexicographically by rank) wins.
    """
    ranked = [n.node_id for n in sorted(nodes, key=lambda n: (-n.memory_mb, n.node_id))]
    if len(ranked) <= 2:
        return ranked
    if len(ranked) <= _EXHAUSTIVE_MAX:
        best, best_score = ranked, _connected_pairs(ranked, edges)
        for perm in itertools.permutations(ranked):  # lexicographic in rank order: the first best wins
            score = _connected_pairs(perm, edges)
            if score > best_score:
                best, best_score = list(perm), score
        return best
    # greedy: from the largest node, step to the highest-ranked unvisited node that is directly connected
    order, left = [ranked[0]], ranked[1:]
    while left:
        nxt = next((c for c in left if frozenset((order[-1], c)) in edges), left[0])
        order.append(nxt)
        left.remove(nxt)
    return order


def allocate_layers(weights: Sequence[float], n_layers: int) -> list[int]:
    """Split ``n_layers`` in proportion to ``weights`` (largest remainder), at least one each.

    Requires ``len(weights) <= n_layers``. A zero (or negative) weight still gets its one layer; all
    zero means equal shares.
    """
    n = len(weights)
    if n == 0 or n > n_layers:
        raise ValueError(f"cannot give {n} nodes at least one of {n_layers} layers")
    w = [max(0.0, x) for x in weights]
    if sum(w) <= 0:
        w = [1.0] * n
    total = sum(w)
    quotas = [x / total * n_layers for x in w]
    counts = [int(q) for q in quotas]
    remainder = n_layers - sum(counts)
    by_fraction = sorted(range(n), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_fraction[:remainder]:
        counts[i] += 1
    for i in range(n):  # no empty ranges: borrow from the largest share
        while counts[i] == 0:
            donor = max(range(n), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def fold_head(plan: Plan, n_layers: int) -> Plan:
    """Map a plan over ``n_layers + h`` units, whose last ``h`` units stand for the output head, back onto
    ``n_layers`` layers: the node that holds the last layer holds the head, so it gets ``h`` fewer layers
    than its share. A node whose share is all head units takes the head and the last layer when its share
    is at least the head (equal nodes and a head as large as a node's share: all of them stay in use);
    a smaller one is left out (the node before it holds the head).

    A decode step reads the head (for SmolLM2-135M Q4_1 as many bytes as 14 of its 30 blocks) on the last
    node; counting it keeps the nodes' work per token, and their memory, in proportion to their shares.
    """
    out: list[PlanEntry] = []
    head_units = (plan[-1].last_layer + 1 - n_layers) if plan else 0
    for e in plan:
        if e.first_layer >= n_layers:
            share = e.last_layer - e.first_layer + 1
            prev = out[-1] if out else None
            if prev is not None and share >= head_units and prev.last_layer > prev.first_layer:
                out[-1] = PlanEntry(prev.node_id, prev.first_layer, prev.last_layer - 1)
                out.append(PlanEntry(e.node_id, n_layers - 1, n_layers - 1))
            break
        out.append(PlanEntry(e.node_id, e.first_layer, min(e.last_layer, n_layers - 1)))
    return tuple(out)


class RingMemoryWeighted:
    """The built-in partitioner (``--partitioner ring-memory-weighted``)."""

    def plan(self, nodes: Sequence[NodeResources], edges: frozenset[frozenset[str]], n_layers: int) -> Plan:
        if n_layers < 1:
            raise ValueError("a model has at least one layer")
        if not nodes:
            raise NoCapacityError("no node is available to run the model")
        if len({n.node_id for n in nodes}) != len(nodes):
            raise ValueError("duplicate node ids in the topology")
        # more nodes than layers: only the largest ones get a layer each
        usable = sorted(nodes, key=lambda n: (-n.memory_mb, n.node_id))[:n_layers]
        order = ring_order(usable, edges)
        memory: Mapping[str, int] = {n.node_id: n.memory_mb for n in usable}
        counts = allocate_layers([float(memory[node]) for node in order], n_layers)
        plan, start = [], 0
        for node, count in zip(order, counts, strict=True):
            plan.append(PlanEntry(node, start, start + count - 1))
            start += count
        return tuple(plan)
