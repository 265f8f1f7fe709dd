"""Cluster speed on loopback: decode tok/s of 1-, 2- and 3-node rings of real ``exo`` processes, and the
aggregate tok/s of 4 concurrent requests on 2 nodes, all in one run. Prints one JSON object.

    .venv/bin/python benchmarks/cluster.py [--tokens 64] [--repeats 2]

Decode tok/s of one request = (generated tokens - 1) / (time of the last token - time of the first token),
read from the streamed chunks (so prefill and model loading are excluded); each figure is the best of
``--repeats`` requests after one warm-up request that loads the shards. The aggregate = all tokens of the 4
concurrent requests / wall time from the first request's first token to the last token. Ratios compare with
the single-node figure measured in this run. Every node is a separate process on 127.0.0.1; nothing leaves
the machine, and every request is bounded by ``max_tokens`` and a timeout.

All nodes of all cluster sizes run with ``OPENBLAS_NUM_THREADS=1`` (one BLAS thread per node process), so
every figure uses the same engine configuration and the ratios isolate what distribution costs. On one
machine this matters: OpenBLAS worker threads spin while waiting for work, and several node processes
sharing two cores each with spinning threads slow each other down by 2-5x (measured: a 3-node ring at 0.19x
of one node with default threads, 0.86x with one thread each). Separate machines do not share cores; to
run several nodes on one machine, give each ``OPENBLAS_NUM_THREADS=cores/nodes``. For reference the JSON
also reports ``decode_tok_s_1node_default_threads``: one node with OpenBLAS' default thread count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from exo_core.nodeproc import NodeProcess, peers_file

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def stream_times(node: NodeProcess, max_tokens: int, prompt: str = PROMPT) -> list[float]:
    """Arrival times of each streamed token of one greedy request."""
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    times: list[float] = []
    for chunk in node.stream("/v1/chat/completions", body, timeout=600):
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
        if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
            times.append(time.perf_counter())
    return times


def decode_rate(times: list[float]) -> float:
    if len(times) < 3:
        raise RuntimeError(f"only {len(times)} tokens streamed: cannot measure decode speed")
    return (len(times) - 1) / (times[-1] - times[0])


def best_decode(node: NodeProcess, tokens: int, repeats: int) -> float:
    stream_times(node, 8)  # warm-up: loads every shard of the plan
    return max(decode_rate(stream_times(node, tokens)) for _ in range(repeats))


ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1"}  # NodeProcess's default, spelled out
DEFAULT_THREADS = {"OPENBLAS_NUM_THREADS": ""}  # unset: OpenBLAS picks its own count


def cluster(tmp: Path, n: int, env: dict[str, str] | None = None) -> list[NodeProcess]:
    """``n`` nodes: n-1 remotes with no peers, and one node whose peers.json lists them all."""
    remotes = []
    for i in range(n - 1):
        empty = peers_file(tmp / f"empty{i}.json", {})
        args = ["--discovery-module", "manual", "--discovery-config-path", str(empty)]
        remotes.append(
            NodeProcess(tmp / f"r{n}-{i}", args=args, env=dict(ONE_THREAD if env is None else env)).start()
        )
    peers = peers_file(tmp / f"peers{n}.json", {f"r{i}": r.address for i, r in enumerate(remotes)})
    head = NodeProcess(
        tmp / f"h{n}", args=["--discovery-module", "manual", "--discovery-config-path", str(peers)]
    )
    nodes = [head.start(), *remotes]
    head.wait_for_nodes(n)
    return nodes


def aggregate(node: NodeProcess, tokens: int, concurrent: int) -> float:
    prompts = [f"{PROMPT} Version {i}." for i in range(concurrent)]
    with ThreadPoolExecutor(concurrent) as pool:
        results = list(pool.map(lambda p: stream_times(node, tokens, p), prompts))
    start = min(r[0] for r in results)
    end = max(r[-1] for r in results)
    return sum(len(r) - 1 for r in results) / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request (default 64)")
    parser.add_argument("--repeats", type=int, default=2, help="measured requests per figure (default 2)")
    args = parser.parse_args()
    out: dict[str, Any] = {"tokens": args.tokens}
    with tempfile.TemporaryDirectory(prefix="exo-bench-cluster-") as d:
        tmp = Path(d)
        nodes = cluster(tmp, 1, env=DEFAULT_THREADS)
        try:
            out["decode_tok_s_1node_default_threads"] = round(
                best_decode(nodes[0], args.tokens, args.repeats), 2
            )
        finally:
            nodes[0].stop()
        for n in (1, 2, 3):
            nodes = cluster(tmp, n)
            try:
                out[f"decode_tok_s_{n}node"] = round(best_decode(nodes[0], args.tokens, args.repeats), 2)
                if n == 2:
                    single_request = decode_rate(stream_times(nodes[0], args.tokens))
                    out["decode_tok_s_2node_single_request"] = round(single_request, 2)
                    out["aggregate_tok_s_4concurrent_2node"] = round(aggregate(nodes[0], args.tokens, 4), 2)
            finally:
                for node in nodes:
                    node.stop()
    single = out["decode_tok_s_1node"]
    out["ratio_2node"] = round(out["decode_tok_s_2node"] / single, 3)
    out["ratio_3node"] = round(out["decode_tok_s_3node"] / single, 3)
    out["aggregate_ratio_4concurrent"] = round(
        out["aggregate_tok_s_4concurrent_2node"] / out["decode_tok_s_2node_single_request"], 3
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
