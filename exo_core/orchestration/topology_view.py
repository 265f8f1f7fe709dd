"""What ``GET /v1/topology`` shows: the cluster as one node sees it.

:func:`describe_topology` turns the cluster view (the reachable nodes, their capabilities and links), the
latest plan the node made, the shards it holds and its recent failovers into the JSON the API returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from exo_core.topology.cluster import ClusterView
from exo_core.topology.partition import Plan

#: the latest plan a node made: model id, number of layers, the plan
LastPlan = tuple[str, int, Plan]


def describe_topology(
    cluster: ClusterView,
    last_plan: LastPlan | None,
    loaded_shards: list[dict[str, object]] | None,
    recent_events: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    """The ``/v1/topology`` body: ``node_id``, the reachable ``nodes`` and the ``connections`` between them,
    the latest ``plan`` (``None`` before the first), ``loaded_shards`` when the node reports them, and
    ``recent_events`` (failovers)."""
    reachable = cluster.reachable()
    declared = cluster.declared()
    nodes = []
    for rec in sorted(cluster.records.values(), key=lambda r: r.node_id):
        if rec.node_id not in reachable:
            continue
        caps = rec.capabilities
        node: dict[str, Any] = {
            "id": rec.node_id,
            "address": rec.address,
            "is_self": rec.node_id == cluster.self_id,
        }
        for key in ("model", "chip", "engine"):
            if isinstance(caps.get(key), str):
                node[key] = caps[key]
        node["memory_mb"] = rec.memory_mb
        if isinstance(caps.get("flops"), dict):
            node["flops"] = caps["flops"]
        held = rec.held_ratios()
        if held:  # what its engine holds per stored byte, by model (after a load; the plan uses it)
            node["held_ratio"] = held
        if rec.node_id in declared:  # peers.json's device_capabilities, beside what the node reports
            node["declared_capabilities"] = declared[rec.node_id]
            node["planned_memory_mb"] = cluster.planned_memory_mb(rec.node_id, declared)
        nodes.append(node)
    connections = [
        {"a": a, "b": b}
        for a, b in sorted(sorted(e) for e in cluster.edges())
        if a in reachable and b in reachable
    ]
    plan = None
    if last_plan is not None:
        model, n_layers, entries = last_plan
        plan = {
            "model": model,
            "n_layers": n_layers,
            "shards": [
                {"node_id": e.node_id, "first_layer": e.first_layer, "last_layer": e.last_layer}
                for e in entries
            ],
        }
    out: dict[str, Any] = {
        "node_id": cluster.self_id,
        "nodes": nodes,
        "connections": connections,
        "plan": plan,
    }
    if loaded_shards is not None:
        out["loaded_shards"] = loaded_shards
    out["recent_events"] = list(recent_events)
    return out
