from __future__ import annotations

import itertools
import random

import pytest

from exo_core.topology.partition import (
    NoCapacityError,
    NodeResources,
    PlanEntry,
    RingMemoryWeighted,
    allocate_layers,
    fold_head,
    ring_order,
)

ring = RingMemoryWeighted()
NONE: frozenset[frozenset[str]] = frozenset()


def edges(*pairs: str) -> frozenset[frozenset[str]]:
    return frozenset(frozenset(p) for p in pairs)


def covers(plan: tuple[PlanEntry, ...], n_layers: int) -> bool:
    layers = [layer for e in plan for layer in range(e.first_layer, e.last_layer + 1)]
    return layers == list(range(n_layers)) and all(e.n_layers >= 1 for e in plan)


def test_single_node_gets_everything() -> None:
    assert ring.plan([NodeResources("a", 8000)], NONE, 30) == (PlanEntry("a", 0, 29),)


def test_proportional_to_memory_largest_first() -> None:
    plan = ring.plan(
        [NodeResources("small", 8000), NodeResources("big", 16000)], edges("small,big".split(",")), 30
    )
    assert plan == (PlanEntry("big", 0, 19), PlanEntry("small", 20, 29))


def test_ties_broken_by_node_id_and_deterministic() -> None:
    nodes = [NodeResources("b", 100), NodeResources("a", 100), NodeResources("c", 100)]
    first = ring.plan(nodes, NONE, 30)
    assert [e.node_id for e in first] == ["a", "b", "c"]
    for perm in itertools.permutations(nodes):
        assert ring.plan(list(perm), NONE, 30) == first


def test_zero_memory_nodes_still_get_a_layer_and_no_empty_ranges() -> None:
    plan = ring.plan([NodeResources("a", 0), NodeResources("b", 64000), NodeResources("c", 0)], NONE, 30)
    assert covers(plan, 30)
    assert {e.node_id: e.n_layers for e in plan} == {"b": 28, "a": 1, "c": 1}
    all_zero = ring.plan([NodeResources("a", 0), NodeResources("b", 0)], NONE, 4)
    assert [e.n_layers for e in all_zero] == [2, 2]


def test_more_nodes_than_layers_uses_the_largest() -> None:
    nodes = [NodeResources(f"n{i}", 1000 + i) for i in range(5)]
    plan = ring.plan(nodes, NONE, 3)
    assert [e.node_id for e in plan] == ["n4", "n3", "n2"] and covers(plan, 3)


def test_prefers_directly_connected_neighbours() -> None:
    # a laptop "l" tunnelled to two remotes that cannot reach each other: l must sit between them
    nodes = [NodeResources("r1", 32000), NodeResources("r2", 16000), NodeResources("l", 8000)]
    order = ring_order(nodes, edges(("l", "r1"), ("l", "r2")))
    assert order == ["r1", "l", "r2"]
    # fully connected: plain memory order
    assert ring_order(nodes, edges(("l", "r1"), ("l", "r2"), ("r1", "r2"))) == ["r1", "r2", "l"]


def test_empty_cluster_and_bad_input() -> None:
    with pytest.raises(NoCapacityError):
        ring.plan([], NONE, 30)
    with pytest.raises(ValueError, match="duplicate"):
        ring.plan([NodeResources("a", 1), NodeResources("a", 2)], NONE, 30)
    with pytest.raises(ValueError):
        allocate_layers([1.0, 1.0, 1.0], 2)


def test_random_topologies_always_cover_every_layer() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        n = rng.randint(1, 9)
        nodes = [
            NodeResources(f"n{i}", rng.choice([0, 1, 8000, 16000, rng.randint(0, 10**6)])) for i in range(n)
        ]
        ids = [x.node_id for x in nodes]
        e = frozenset(frozenset(p) for p in itertools.combinations(ids, 2) if rng.random() < 0.5)
        layers = rng.randint(1, 40)
        plan = ring.plan(nodes, e, layers)
        assert covers(plan, layers)
        assert plan == ring.plan(list(reversed(nodes)), e, layers)


def test_relay_node_sits_in_the_middle_even_when_it_would_lead() -> None:
    # equal memory: "a" ranks first, but only a middle position makes every hidden-state hop direct
    nodes = [NodeResources("a", 1000), NodeResources("b", 1000), NodeResources("c", 1000)]
    assert ring_order(nodes, edges(("a", "b"), ("a", "c"))) == ["b", "a", "c"]


def test_fold_head_gives_the_last_node_fewer_layers() -> None:
    """Two equal nodes, 30 layers and a head worth 8: shares of 19 units each, the head's 8 on the last."""
    nodes = [NodeResources("a", 8000), NodeResources("b", 8000)]
    plan = fold_head(ring.plan(nodes, NONE, 30 + 8), 30)
    assert plan == (PlanEntry("a", 0, 18), PlanEntry("b", 19, 29))
    assert covers(plan, 30)
    three = fold_head(ring.plan([*nodes, NodeResources("c", 8000)], NONE, 38), 30)
    assert [e.n_layers for e in three] == [13, 13, 4] and covers(three, 30)


def test_fold_head_leaves_out_a_node_whose_share_is_only_head() -> None:
    nodes = [NodeResources("big", 64000), NodeResources("tiny", 1000)]
    units = ring.plan(nodes, NONE, 4 + 8)  # tiny's one unit lies past the 4 layers
    assert units[-1] == PlanEntry("tiny", 11, 11)
    assert fold_head(units, 4) == (PlanEntry("big", 0, 3),)


def test_fold_head_gives_a_head_sized_share_the_head_and_the_last_layer() -> None:
    """Three equal nodes and a head worth 14 of 30 layers (SmolLM2 Q4_1 as stored): shares of 15, 15 and 14
    units; the third holds the head and one layer instead of being left out."""
    nodes = [NodeResources(n, 8000) for n in "abc"]
    plan = fold_head(ring.plan(nodes, NONE, 30 + 14), 30)
    assert plan == (PlanEntry("a", 0, 14), PlanEntry("b", 15, 28), PlanEntry("c", 29, 29))
    assert covers(plan, 30)


def test_fold_head_without_head_units_is_the_plan_itself() -> None:
    plan = ring.plan([NodeResources("a", 8000), NodeResources("b", 4000)], NONE, 30)
    assert fold_head(plan, 30) == plan
