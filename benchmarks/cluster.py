"""Cluster speed on loopback: decode tok/s of 1-, 2- and 3-node rings of real ``exo`` processes, and the
aggregate tok/s of 4 concurrent requests on 1 and on 2 nodes, all in one run. Prints one JSON object.

    .venv/bin/python benchmarks/cluster.py [--tokens 64] [--rounds 3] [--engine numpy|mlx]

``--engine`` is every node's ``--inference-engine`` (default ``numpy``).

Decode tok/s of one request = (generated tokens - 1) / (time of the last token - time of the first token),
read from the streamed chunks (so prefill and model loading are excluded). The aggregate = all tokens of 4
concurrent requests on the ring / wall time from the first request's first token to the last token.
The 1-, 2- and 3-node rings all run at once (idle, a node costs nothing), each warmed up by one request
that loads the shards; then ``--rounds`` rounds each measure one request per ring and the aggregate, in
turn, and each figure keeps its best round (``every_round`` lists them all). Ratios compare with the
single-node figure, and each aggregate with the single-request figure of its ring, of this run. Every
node is a separate process on 127.0.0.1; nothing leaves the machine, and every request is bounded by
``max_tokens`` and a timeout.

All nodes of all cluster sizes run with ``OPENBLAS_NUM_THREADS=1`` (one BLAS thread per node process), so
every figure uses the same engine configuration and the ratios isolate what distribution costs. On one
machine this matters: OpenBLAS worker threads spin while waiting for work, and several node processes
sharing two cores each with spinning threads slow each other down by 2-5x (measured: a 3-node ring at 0.19x
of one node with default threads, 0.86x with one thread each). Separate machines do not share cores; to
run several nodes on one machine, give each ``OPENBLAS_NUM_THREADS=cores/nodes``. For reference the JSON
also reports ``decode_tok_s_1node_default_threads``: one node with OpenBLAS' default thread count.

Likewise each node of an n-node ring gets ``EXO_COMPUTE_SLOTS=cores/n`` (at least 1): a node runs
``cores / BLAS threads`` forward passes at once by default, which on a shared machine would put 4 passes
of 2 nodes on 2 cores and split the batches of concurrent decode steps (measured: 4 concurrent requests
on 2 nodes, 142 of 256 steps per node ran in batches with 2 slots each, 249 of 256 with 1).
"""

from __future__ import annotations

import argparse
import json
import os
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


ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1"}  # NodeProcess's default, spelled out
DEFAULT_THREADS = {"OPENBLAS_NUM_THREADS": ""}  # unset: OpenBLAS picks its own count


def core_share(n: int) -> dict[str, str]:
    """Environment of each of ``n`` nodes sharing this machine: one BLAS thread, and cores/n compute slots
    (at least 1), as for one machine per node with cores/n cores each."""
    return {**ONE_THREAD, "EXO_COMPUTE_SLOTS": str(max(1, (os.cpu_count() or 1) // n))}


def cluster(tmp: Path, n: int, engine: str, env: dict[str, str] | None = None) -> list[NodeProcess]:
    """``n`` nodes running ``engine``: n-1 remotes with no peers, and one node whose peers.json lists them."""
    env = core_share(n) if env is None else env
    remotes = []
    for i in range(n - 1):
        empty = peers_file(tmp / f"empty{i}.json", {})
        args = ["--discovery-module", "manual", "--discovery-config-path", str(empty)]
        args += ["--inference-engine", engine]
        remotes.append(NodeProcess(tmp / f"r{n}-{i}", args=args, env=dict(env)).start())
    peers = peers_file(tmp / f"peers{n}.json", {f"r{i}": r.address for i, r in enumerate(remotes)})
    args = ["--discovery-module", "manual", "--discovery-config-path", str(peers)]
    head = NodeProcess(tmp / f"h{n}", args=[*args, "--inference-engine", engine], env=dict(env))
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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best of each (default 3)")
    parser.add_argument("--engine", default="numpy", help="every node's --inference-engine (default numpy)")
    args = parser.parse_args()
    if args.tokens < 3 or args.rounds < 1:
        parser.error("--tokens must be >= 3 and --rounds >= 1")
    out: dict[str, Any] = {"engine": args.engine, "tokens": args.tokens, "rounds": args.rounds}
    best: dict[str, float] = {}
    each: dict[str, list[float]] = {}

    def keep(key: str, value: float) -> None:
        best[key] = max(best.get(key, 0.0), value)
        each.setdefault(key, []).append(round(value, 1))

    with tempfile.TemporaryDirectory(prefix="exo-bench-cluster-") as d:
        tmp = Path(d)
        nodes = cluster(tmp, 1, args.engine, env=DEFAULT_THREADS)
        try:
            stream_times(nodes[0], 8)  # warm-up: loads the model
            for _ in range(args.rounds):
                keep("decode_tok_s_1node_default_threads", decode_rate(stream_times(nodes[0], args.tokens)))
        finally:
            nodes[0].stop()
        # all three rings stay up (idle nodes cost nothing) so that their rounds interleave: the machine's
        # speed drifts, and measuring one ring after the other would fold that drift into the ratios
        rings: dict[int, list[NodeProcess]] = {}
        try:
            for n in (1, 2, 3):
                (tmp / f"ring{n}").mkdir()
                rings[n] = cluster(tmp / f"ring{n}", n, args.engine)
                stream_times(rings[n][0], 8)  # warm-up: loads every shard of the plan
            for _ in range(args.rounds):
                for n, ring in rings.items():
                    keep(f"decode_tok_s_{n}node", decode_rate(stream_times(ring[0], args.tokens)))
                keep("aggregate_tok_s_4concurrent_1node", aggregate(rings[1][0], args.tokens, 4))
                keep("aggregate_tok_s_4concurrent_2node", aggregate(rings[2][0], args.tokens, 4))
        finally:
            for ring in rings.values():
                for node in ring:
                    node.stop()
    out.update({k: round(v, 2) for k, v in best.items()})
    single = best["decode_tok_s_1node"]
    out["ratio_2node"] = round(best["decode_tok_s_2node"] / single, 3)
    out["ratio_3node"] = round(best["decode_tok_s_3node"] / single, 3)
    out["aggregate_ratio_4concurrent"] = round(
        best["aggregate_tok_s_4concurrent_2node"] / best["decode_tok_s_2node"], 3
    )
    out["aggregate_ratio_4concurrent_1node"] = round(best["aggregate_tok_s_4concurrent_1node"] / single, 3)
    out["every_round"] = each
    print(json.dumps(out))


if __name__ == "__main__":
    main()
