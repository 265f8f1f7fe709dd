from __future__ import annotations

from exo_core.orchestration.topology_view import describe_topology
from exo_core.topology.cluster import ClusterView, NodeRecord
from exo_core.topology.partition import PlanEntry


def test_the_topology_shows_the_reachable_nodes_their_links_and_the_latest_plan() -> None:
    view = ClusterView("a", {"memory": 2048, "chip": "m1", "flops": {"fp16": 1.0}, "engine": 3}, "h:1")
    view.set_neighbors(["b"])
    view.merge(NodeRecord("b", 1, {"memory": 1024, "model": "m"}, frozenset({"a"}), "h:2"))
    view.merge(NodeRecord("z", 1, {"memory": 1024}, frozenset({"y"}), "h:9"))  # no path from a
    plan = (PlanEntry("a", 0, 3), PlanEntry("b", 4, 7))
    events = [{"event": "failover"}]
    out = describe_topology(view, ("m", 8, plan), [{"model": "m"}], events)
    assert out["node_id"] == "a"
    assert out["nodes"] == [
        {
            "id": "a",
            "address": "h:1",
            "is_self": True,
            "chip": "m1",
            "memory_mb": 2048,
            "flops": {"fp16": 1.0},
        },
        {"id": "b", "address": "h:2", "is_self": False, "model": "m", "memory_mb": 1024},
    ]
    assert out["connections"] == [{"a": "a", "b": "b"}]
    assert out["plan"] == {
        "model": "m",
        "n_layers": 8,
        "shards": [
            {"node_id": "a", "first_layer": 0, "last_layer": 3},
            {"node_id": "b", "first_layer": 4, "last_layer": 7},
        ],
    }
    assert out["loaded_shards"] == [{"model": "m"}] and out["recent_events"] == events
    assert list(out) == ["node_id", "nodes", "connections", "plan", "loaded_shards", "recent_events"]


def test_before_any_plan_there_is_none_and_no_shards_key_without_a_shard_host() -> None:
    out = describe_topology(ClusterView("a", {}), None, None, ())
    assert out["plan"] is None and "loaded_shards" not in out and out["recent_events"] == []
    assert out["nodes"] == [{"id": "a", "address": "", "is_self": True, "memory_mb": 0}]


def test_the_topology_shows_what_each_engine_holds_per_stored_byte() -> None:
    view = ClusterView("a", {"memory": 2048}, "h:1")
    view.set_held_ratio("m", 1.61)
    view.set_neighbors(["b", "c"])
    malformed = {"memory": 1024, "held_ratio": {"m": "x", 3: 1.0}}
    view.merge(NodeRecord("b", 1, malformed, frozenset({"a"}), "h:2"))
    view.merge(NodeRecord("c", 1, {"memory": 1024, "held_ratio": 7}, frozenset({"a"}), "h:3"))
    nodes = describe_topology(view, None, None, [])["nodes"]
    assert nodes[0]["held_ratio"] == {"m": 1.61}
    assert "held_ratio" not in nodes[1] and "held_ratio" not in nodes[2]  # malformed: left out
