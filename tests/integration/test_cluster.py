"""Real clusters of ``exo`` processes on loopback serving the default model.

Greedy answers of 2- and 3-node rings must equal a single node's token for token, whichever node gets
the HTTP request; concurrent streams must not cross; a killed node costs its streams nothing: they move to
the survivor, which keeps serving (tests/integration/test_failover.py has the 3-node cases).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from exo_core.nodeproc import peers_file

from .support import PROMPTS, Start, greedy, no_peers, plan_nodes, stream, two_nodes

pytestmark = pytest.mark.timeout(300)


def test_two_nodes_direct_match_single_node(
    exo_node: Start, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    local, remote = two_nodes(exo_node, tmp_path)
    remote.wait_for_nodes(2)  # the remote learns the local node from the inbound connection alone
    for api_node in (local, remote):
        for prompt in PROMPTS[:2]:
            assert greedy(api_node, prompt) == reference[prompt]
        assert sorted(plan_nodes(api_node)) == sorted([local.node_id, remote.node_id])


def test_three_nodes_manual_match_single_node(
    exo_node: Start, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    b = exo_node(*no_peers(tmp_path, "b"))
    c = exo_node(*no_peers(tmp_path, "c"))
    peers = peers_file(tmp_path / "peers.json", {"remote-node-1": b.address, "remote-node-2": c.address})
    a = exo_node("--discovery-module", "manual", "--discovery-config-path", str(peers))
    for node in (a, b, c):
        node.wait_for_nodes(3)
    for api_node in (a, b, c):
        prompt = PROMPTS[2]
        assert greedy(api_node, prompt) == reference[prompt]
        assert len(plan_nodes(api_node)) == 3
    shards = {
        s["node_id"]: (s["first_layer"], s["last_layer"]) for s in a.get("/v1/topology")["plan"]["shards"]
    }
    assert sorted(shards.values())[0][0] == 0 and sorted(shards.values())[-1][1] == 29


def test_eight_concurrent_streams_on_two_nodes(
    exo_node: Start, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    """Every stream gets exactly its lone answer, although the nodes batch the concurrent decode steps."""
    local, remote = two_nodes(exo_node, tmp_path, env={"EXO_LOG_LEVEL": "DEBUG"})
    alone = {p: "".join(reference[p]) for p in PROMPTS}
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(lambda p: stream(local, p, 20), PROMPTS))
    for prompt, (text, error) in zip(PROMPTS, results, strict=True):
        assert error is None
        assert text == alone[prompt], prompt
    logs = local.log_path.read_text(errors="replace") + remote.log_path.read_text(errors="replace")
    assert "decode steps as one batch" in logs
    # the output head counts as 8 layers: the node holding it gets fewer (two equal nodes: 19 and 11)
    shards = [(s["first_layer"], s["last_layer"]) for s in local.get("/v1/topology")["plan"]["shards"]]
    assert shards[0][0] == 0 and shards[-1][1] == 29 and len(shards) == 2
    assert shards[0][1] - shards[0][0] > shards[-1][1] - shards[-1][0] + 4


def test_killed_node_costs_the_stream_nothing_and_the_survivor_serves_alone(
    exo_node: Start, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    local, remote = two_nodes(exo_node, tmp_path)
    chunks: list[float] = []

    def on_chunk(chunk: dict[str, Any]) -> None:
        chunks.append(time.monotonic())
        if len(chunks) == 5:
            remote.kill()

    started = time.monotonic()
    _text, error = stream(local, "Write a very long story about a dragon and a knight.", 60, on_chunk)
    assert len(chunks) >= 5, "the stream ended before the node was killed"
    assert error is None, f"the stream failed instead of moving to the survivor: {error}"
    assert len(chunks) >= 60  # every token came (chunks also count the role and finish chunks)
    assert time.monotonic() - started < 120
    # the survivor re-planned over itself and keeps serving
    assert plan_nodes(local) == [local.node_id]
    assert greedy(local, PROMPTS[0]) == reference[PROMPTS[0]]
    assert plan_nodes(local) == [local.node_id]
