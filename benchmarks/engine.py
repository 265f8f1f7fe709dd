"""Engine speed: prefill and decode tok/s on the default model, against the float32 bandwidth ceiling and
llama.cpp, all measured in the same run. Prints one JSON object.

    .venv/bin/python benchmarks/engine.py [--engine numpy|mlx|NAME] [--llamacpp-python PYTHON]

The engine is built by name through the plugin registry, so any engine plugin can be measured. llama.cpp is
measured in-process when ``llama_cpp`` imports, else in a subprocess of ``--llamacpp-python`` (or
``$EXO_BENCH_LLAMACPP_PYTHON``) when given.

``fp32_ceiling_tok_s`` = read bandwidth of a float32 GEMV over a matrix as large as the weights one
token reads, divided by those bytes: the best a float32 engine can decode here.
``ceiling_ratio`` = decode / ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import anyio
import numpy as np

from exo_core.components import ComponentContext
from exo_core.models.source import ModelSource, load_config, resolve_model
from exo_core.models.tokenizer import load_tokenizer
from exo_core.plugins import load_plugins
from exo_core.settings import CoreSettings

TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type made books cheaper "
    "and ideas travelled faster than ever before across Europe and beyond. "
)


def prompt_ids(source: ModelSource, n: int) -> list[int]:
    """``n`` token ids of ordinary English text."""
    tok = load_tokenizer(source)
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(TEXT)
    return ids[:n]


async def bench_engine(name: str, source: ModelSource, ids: list[int], n_decode: int) -> dict[str, Any]:
    registry = load_plugins().registry
    component = registry.get("engine", name)
    settings = component.settings() if component.settings is not None else None
    engine = component.build(ComponentContext(core=CoreSettings(), settings=settings, node_id="bench"))
    n_layers = load_config(source).n_layers
    started = time.perf_counter()
    await engine.load(source, 0, n_layers - 1, n_layers)
    load_s = time.perf_counter() - started
    await engine.forward("warm", np.array(ids[:8]))
    await engine.free("warm")
    started = time.perf_counter()
    logits = await engine.forward("r", np.array(ids))
    prefill_s = time.perf_counter() - started
    token = int(np.argmax(logits))
    started = time.perf_counter()
    for _ in range(n_decode):
        logits = await engine.forward("r", np.array([token]))
        token = int(np.argmax(logits))
    decode_s = time.perf_counter() - started
    memory = engine.memory()
    await engine.free("r")
    return {
        "load_s": round(load_s, 3),
        "prefill_tok_s": round(len(ids) / prefill_s, 1),
        "decode_tok_s": round(n_decode / decode_s, 2),
        "weights_bytes": memory.weights,
    }


def read_bandwidth(nbytes: int, cols: int, reps: int = 5) -> float:
    """Bytes/s of ``x @ W.T`` over a float32 ``W`` of about ``nbytes`` (best of ``reps``)."""
    rows = max(1, nbytes // (4 * cols))
    w = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    x = np.ones((1, cols), np.float32)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        x @ w.T
        best = min(best, time.perf_counter() - started)
    return w.nbytes / best


LLAMACPP_SCRIPT = r"""
import json, sys, time
import llama_cpp
path, ids, n_decode = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(path, n_ctx=1024, n_threads=2, verbose=False)
llm.eval(ids[:8]); llm.reset()
t = time.perf_counter(); llm.eval(ids); prefill = time.perf_counter() - t
tok = llm.sample(temp=0.0)
t = time.perf_counter()
for _ in range(n_decode):
    llm.eval([tok]); tok = llm.sample(temp=0.0)
decode = time.perf_counter() - t
print(json.dumps({"prefill_tok_s": len(ids) / prefill, "decode_tok_s": n_decode / decode}))
"""


def bench_llamacpp(
    source: ModelSource, ids: list[int], n_decode: int, python: str | None
) -> dict[str, Any] | None:
    if source.format != "gguf":
        return None
    args = [str(source.path), json.dumps(ids), str(n_decode)]
    try:
        import llama_cpp  # noqa: F401

        cmd = [sys.executable, "-c", LLAMACPP_SCRIPT, *args]
    except ImportError:
        if not python:
            return None
        cmd = [python, "-c", LLAMACPP_SCRIPT, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        print(f"llama.cpp benchmark failed: {proc.stderr[-2000:]}", file=sys.stderr)
        return None
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--engine", default="numpy", help="engine name in the plugin registry (numpy, mlx, ...)"
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=104)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--llamacpp-python", default=os.environ.get("EXO_BENCH_LLAMACPP_PYTHON"))
    args = parser.parse_args()
    source = resolve_model(args.model)
    config = load_config(source)
    ids = prompt_ids(source, args.prompt_tokens)
    result: dict[str, Any] = {
        "engine": args.engine,
        "model": args.model,
        "prompt_tokens": len(ids),
        "decode_tokens": args.decode_tokens,
    }
    measured = await bench_engine(args.engine, source, ids, args.decode_tokens)
    result.update(measured)
    # float32 bytes read per decoded token: every block's matrices plus the output head (an embedding row
    # lookup reads one row), whatever the engine actually stores
    c = config
    per_layer = (
        4
        * c.hidden_size
        * ((c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim + 3 * c.intermediate_size)
    )
    bytes_per_token = c.n_layers * per_layer + 4 * c.vocab_size * c.hidden_size
    bandwidth = read_bandwidth(bytes_per_token, c.hidden_size)
    ceiling = bandwidth / bytes_per_token
    result.update(
        {
            "fp32_bytes_per_token": bytes_per_token,
            "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "fp32_ceiling_tok_s": round(ceiling, 2),
            "ceiling_ratio": round(measured["decode_tok_s"] / ceiling, 3),
        }
    )
    ref = bench_llamacpp(source, ids, args.decode_tokens, args.llamacpp_python)
    if ref is not None:
        result["llamacpp_prefill_tok_s"] = round(ref["prefill_tok_s"], 1)
        result["llamacpp_decode_tok_s"] = round(ref["decode_tok_s"], 2)
        result["prefill_ratio_vs_llamacpp"] = round(measured["prefill_tok_s"] / ref["prefill_tok_s"], 3)
        result["decode_ratio_vs_llamacpp"] = round(measured["decode_tok_s"] / ref["decode_tok_s"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
