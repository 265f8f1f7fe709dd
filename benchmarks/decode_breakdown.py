"""Where a decode token's time goes on the NumPy engine's quantized path; prints one JSON object.

    .venv/bin/python benchmarks/decode_breakdown.py [--model smollm2-135m] [--rounds 5] [--tokens 128]

Loads the whole model as one :class:`~exo_engine_numpy.quant_shard.QuantShard`, prefills a 104-token prompt,
then times ``--tokens`` greedy steps of ``QuantShard.forward`` with a timer around every onnxruntime graph
call (``qkv``, ``rest``, ``head``) and around the NumPy attention. Per token, best round:

- ``token_ms``: the whole step;
- ``graphs_ms``: the graph calls, split into ``calls_ms`` (``graph_calls`` times onnxruntime's cost of one
  call, measured on a graph with one tiny ``Add``) and ``kernels_ms`` (the rest: the products themselves);
- ``attention_ms``: RoPE, the KV-cache writes and the attention of :func:`attend_steps`;
- ``glue_ms``: everything else (the embedding lookup, Python between the calls, the argmax);
- ``offset_terms_ms``: what the per-block offsets (Q4_1's mins) cost inside the kernels' time: a second
  copy of the model is built without its offset terms (wrong numbers, same kernels otherwise) and run in
  the same rounds, interleaved; this is the median over rounds of the difference of their token times.

Issue #13 asks for this breakdown when the decode ratio against llama.cpp falls short.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from exo_engine_numpy import quant_shard
from exo_engine_numpy.ggml_blocks import Blocks
from exo_engine_numpy.ort_graphs import Graph, GraphBuilder, Product

from exo_core.models.source import load_config, resolve_model


class Timed:
    """A graph whose calls add their time to ``totals[kind]`` and count in ``totals['calls']``."""

    def __init__(self, graph: Graph, kind: str, totals: dict[str, float]) -> None:
        self._graph = graph
        self._kind = kind
        self._totals = totals

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._graph(*arrays)
        self._totals[self._kind] += time.perf_counter() - t0
        self._totals["calls"] += 1
        return out


def instrument(shard: quant_shard.QuantShard, totals: dict[str, float]) -> quant_shard.QuantShard:
    """Put a timer around every graph of ``shard``."""
    for layer in shard.layers:
        layer.qkv = Timed(layer.qkv, "qkv", totals)  # type: ignore[assignment]
        layer.rest = Timed(layer.rest, "rest", totals)  # type: ignore[assignment]
    assert shard.head is not None
    shard.head = Timed(shard.head, "head", totals)  # type: ignore[assignment]
    return shard


def without_offsets(build: Callable[[], quant_shard.QuantShard]) -> quant_shard.QuantShard:
    """``build()`` with every product's per-block offsets left out of its graphs."""
    product = GraphBuilder._product

    def bare(self: GraphBuilder, x: str, p: Product) -> str:
        w = p.weight
        return product(self, x, Product(replace(w, offset=None)) if isinstance(w, Blocks) else p)

    GraphBuilder._product = bare  # type: ignore[method-assign]
    try:
        return build()
    finally:
        GraphBuilder._product = product  # type: ignore[method-assign]


def call_cost(n: int = 3000) -> float:
    """Seconds onnxruntime takes for one call of a graph that does almost nothing."""
    g = GraphBuilder("tiny")
    y = g.op("Add", ["x", g.const("c", np.ones((1, 8), np.float32))])[0]
    tiny = g.session([("x", 8)], [(y, 8)])
    x = np.ones((1, 8), np.float32)
    for _ in range(200):
        tiny(x)
    t0 = time.perf_counter()
    for _ in range(n):
        tiny(x)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    source = resolve_model(args.model)
    n_layers = load_config(source).n_layers
    totals: dict[str, float] = {"qkv": 0.0, "rest": 0.0, "head": 0.0, "attention": 0.0, "calls": 0.0}
    scratch = dict(totals)  # where the offset-free copy's timers count (not reported)
    current = [totals]
    shard = instrument(quant_shard.QuantShard(source, 0, n_layers - 1), totals)
    bare = instrument(without_offsets(lambda: quant_shard.QuantShard(source, 0, n_layers - 1)), scratch)
    attend: Callable[..., np.ndarray] = quant_shard.attend_steps

    def timed_attend(*a: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = attend(*a)
        current[0]["attention"] += time.perf_counter() - t0
        return out

    quant_shard.attend_steps = timed_attend  # type: ignore[assignment]
    per_call = call_cost()
    prompt = np.arange(1, 105)
    rounds, bare_rounds = [], []
    for i in range(args.rounds):
        pair = [(shard, totals, rounds), (bare, scratch, bare_rounds)]
        for which, into, out in pair if i % 2 == 0 else pair[::-1]:  # alternate which goes first
            current[0] = into
            cache = which.new_cache(256, 4096)
            token = int(np.argmax(which.forward(cache, prompt, all_logits=False)))
            for key in into:
                into[key] = 0.0
            t0 = time.perf_counter()
            for _ in range(args.tokens):
                token = int(np.argmax(which.forward(cache, np.array([token]), all_logits=False)))
            step = (time.perf_counter() - t0) / args.tokens
            out.append({"token": step, **{k: v / args.tokens for k, v in into.items()}})
    offsets = float(np.median([a["token"] - b["token"] for a, b in zip(rounds, bare_rounds, strict=True)]))
    best = min(rounds, key=lambda r: r["token"])
    graphs = best["qkv"] + best["rest"] + best["head"]
    ms = 1e3
    print(
        json.dumps(
            {
                "model": args.model,
                "tokens": args.tokens,
                "token_ms": round(best["token"] * ms, 3),
                "graphs_ms": round(graphs * ms, 3),
                "qkv_ms": round(best["qkv"] * ms, 3),
                "rest_ms": round(best["rest"] * ms, 3),
                "head_ms": round(best["head"] * ms, 3),
                "graph_calls": best["calls"],
                "call_cost_us": round(per_call * 1e6, 2),
                "calls_ms": round(best["calls"] * per_call * ms, 3),
                "kernels_ms": round((graphs - best["calls"] * per_call) * ms, 3),
                "attention_ms": round(best["attention"] * ms, 3),
                "glue_ms": round((best["token"] - graphs - best["attention"]) * ms, 3),
                "offset_terms_ms": round(offsets * ms, 3),
                "every_round_token_ms": [round(r["token"] * ms, 3) for r in rounds],
            }
        )
    )


if __name__ == "__main__":
    main()
