"""peers.json ``device_capabilities`` are honoured: the declared memory caps what the plan gives a peer (the
lower of declared and reported), and ``/v1/topology`` shows both figures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .support import PROMPTS, Start, greedy, no_peers

pytestmark = pytest.mark.timeout(300)

DECLARED = {
    "model": "Old laptop",
    "chip": "i5",
    "memory": 4096,
    "flops": {"fp32": 1.0, "fp16": 2.0, "int8": 4.0},
}


def test_declared_memory_caps_the_peers_share_of_the_plan(
    exo_node: Start, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    remote = exo_node(*no_peers(tmp_path, "remote"))
    peers = tmp_path / "peers.json"
    peers.write_text(
        json.dumps({"peers": {"laptop": {"address": remote.address, "device_capabilities": DECLARED}}})
    )
    local = exo_node("--discovery-module", "manual", "--discovery-config-path", str(peers))
    local.wait_for_nodes(2)
    assert greedy(local, PROMPTS[0]) == reference[PROMPTS[0]]  # builds a plan
    deadline = time.monotonic() + 10
    while True:
        topo = local.get("/v1/topology")
        nodes = {n["id"]: n for n in topo["nodes"]}
        if "declared_capabilities" in nodes[remote.node_id] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    shown = nodes[remote.node_id]
    reported = shown["memory_mb"]
    assert reported > 4096, "this test needs a machine with more than 4 GB"
    assert shown["declared_capabilities"] == DECLARED and shown["planned_memory_mb"] == 4096
    assert "declared_capabilities" not in nodes[local.node_id]
    layers = {s["node_id"]: s["last_layer"] - s["first_layer"] + 1 for s in topo["plan"]["shards"]}
    total = sum(layers.values())
    local_mb = nodes[local.node_id]["memory_mb"]
    # what 4096 MB buys beside the local node's memory (the output head counted as layers, as the plan
    # does); a share smaller than the head leaves the node out of the plan altogether
    fair = (total + 14) * 4096 / (4096 + local_mb)
    assert layers.get(remote.node_id, 0) <= fair, (layers, fair)
    assert layers[local.node_id] > layers.get(remote.node_id, 0)
    # the remote node, which declares nothing about the local one, plans by the reported figures
    remote_topo = remote.get("/v1/topology")
    assert all("declared_capabilities" not in n for n in remote_topo["nodes"])
