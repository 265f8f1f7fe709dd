from __future__ import annotations

import pytest

from exo_core.topology.cluster import ClusterView, NodeRecord


def caps(mb: int) -> dict[str, object]:
    return {"model": "m", "chip": "c", "memory": mb, "flops": {"fp32": 1.0, "fp16": 1.0, "int8": 1.0}}


def view(node: str, mb: int = 1000) -> ClusterView:
    return ClusterView(node, caps(mb))


def gossip(*views: ClusterView, rounds: int = 4) -> None:
    for _ in range(rounds):
        for src in views:
            for dst in views:
                if dst.self_id in src.own.neighbors:
                    for rec in list(src.records.values()):
                        dst.merge(rec)


def test_gossip_converges_on_a_line() -> None:
    a, b, c = view("a", 100), view("b", 200), view("c", 300)
    a.set_neighbors(["b"])
    b.set_neighbors(["a", "c"])
    c.set_neighbors(["b"])
    gossip(a, b, c)
    for v in (a, b, c):
        assert v.reachable() == {"a", "b", "c"}
        assert v.edges() == frozenset({frozenset("ab"), frozenset("bc")})
    assert a.next_hop("c") == "b" and a.next_hop("b") == "b" and a.next_hop("a") == "a"
    assert {r.node_id: r.memory_mb for r in a.resources()} == {"a": 100, "b": 200, "c": 300}


def test_newer_record_wins_older_is_ignored() -> None:
    a = view("a")
    old = NodeRecord("b", 5, caps(1), frozenset({"a"}))
    new = NodeRecord("b", 6, caps(2), frozenset())
    assert a.merge(new)
    assert not a.merge(old)
    assert a.records["b"].memory_mb == 2
    assert not a.merge(NodeRecord("a", 10**30, caps(9), frozenset()))  # nobody speaks for us


def test_departure_makes_node_unreachable_then_pruned() -> None:
    a, b = view("a"), view("b")
    a.set_neighbors(["b"])
    b.set_neighbors(["a"])
    gossip(a, b)
    assert a.reachable() == {"a", "b"}
    a.set_neighbors([])  # the connection dropped
    assert a.reachable() == {"a"}
    assert a.next_hop("b") is None
    assert a.prune(max_age=5, now=a.received_at["b"] + 1) == []
    assert a.prune(max_age=5, now=a.received_at["b"] + 10) == ["b"]
    assert "b" not in a.records


def test_record_round_trip_and_validation() -> None:
    rec = NodeRecord("x", 3, caps(5), frozenset({"y"}), "127.0.0.1:1")
    assert NodeRecord.from_dict(rec.to_dict()) == rec
    for bad in (
        {},
        {"node_id": "", "seq": 1},
        {"node_id": "x", "seq": -1},
        {"node_id": "x", "seq": 1, "neighbors": [1]},
    ):
        with pytest.raises(ValueError, match="malformed"):
            NodeRecord.from_dict(bad)


def test_to_json_shape() -> None:
    a = view("a")
    a.set_neighbors(["b"])
    a.merge(NodeRecord("b", 1, caps(5), frozenset({"a"})))
    out = a.to_json()
    assert out["self"] == "a"
    assert [n["node_id"] for n in out["nodes"]] == ["a", "b"]
    assert out["connections"] == [["a", "b"]]


def test_a_leaving_node_is_gossiped_and_left_out_of_plans() -> None:
    a, b, c = view("a", 100), view("b", 200), view("c", 300)
    a.set_neighbors(["b", "c"])
    b.set_neighbors(["a"])
    c.set_neighbors(["a"])
    gossip(a, b, c)
    assert b.set_capability("draining", True)
    assert not b.set_capability("draining", True)  # unchanged: no new record
    gossip(a, b, c)
    for v in (a, b, c):
        assert v.leaving() == {"b"}
        assert "b" in v.reachable()  # still connected: it finishes what it serves
        assert {r.node_id for r in v.resources()} == {"a", "c"}


def test_declared_memory_caps_what_the_plan_counts() -> None:
    """peers.json's device_capabilities: the lower of declared and reported memory is what the partitioner
    sees; a declaration stands alone for a node that reports none; other declared fields change nothing."""
    a, b, c = view("a", 24576), view("b", 24576), view("c", 0)
    a.set_neighbors(["b", "c"])
    b.set_neighbors(["a"])
    c.set_neighbors(["a"])
    gossip(a, b, c)
    declared = {"b": caps(4096), "c": caps(2048), "zz": caps(1)}  # zz: declared but not in the cluster
    a.declared_source = lambda: declared
    assert {r.node_id: r.memory_mb for r in a.resources()} == {"a": 24576, "b": 4096, "c": 2048}
    declared["b"] = caps(65536)  # declaring more than the node has does not raise it
    assert a.planned_memory_mb("b") == 24576
    declared["b"] = {"chip": "x"}  # no memory declared
    assert a.planned_memory_mb("b") == 24576
    assert b.declared() == {} and b.planned_memory_mb("a") == 24576
