"""Engine speed and memory: prefill and decode tok/s on the default model, against llama.cpp on the same file,
the NumPy engine's float32 path and the float32 bandwidth ceiling, all measured in the same run. Prints one
JSON object.

    .venv/bin/python benchmarks/engine.py [--engine numpy|mlx|NAME] [--rounds N] [--llamacpp-python PYTHON]

Engines are built by name through the plugin registry, so any engine plugin can be measured. Unless
``--no-baseline``, the measured engine runs beside a baseline: the NumPy engine's float32 path
(``--numpy-weights float32``) when the measured engine is ``numpy`` (figures prefixed ``float32_``), else the
NumPy engine with its default settings (``numpy_``). Each engine loads once, then ``--rounds`` rounds each run
one prefill and ``--decode-tokens`` greedy decode steps per engine, interleaved, and each engine keeps its
best round (the machine is shared and its speed drifts; interleaving and best-of-N keep the ratios fair).
llama.cpp is measured the same way (a subprocess per round) when ``llama_cpp`` imports, or with
``--llamacpp-python`` / ``$EXO_BENCH_LLAMACPP_PYTHON`` / ``/opt/llamacpp-venv/bin/python``.

Memory: ``weights_bytes`` is the engine's own count (``memory().weights``; the NumPy engine's quantized path
measures what onnxruntime keeps, its packing included, see docs/engines.md), ``file_tensor_bytes`` the bytes
of the model file's tensors, ``memory_ratio_vs_file`` their ratio; ``rss_load_bytes`` is the process's RSS
growth while the engine loaded (the measured engine loads first, into a fresh process) and
``rss_ratio_vs_file`` its ratio to the file's tensors.

``fp32_ceiling_tok_s`` = read bandwidth of a float32 GEMV over a matrix as large as the weights one token
reads, divided by those bytes: the best a float32 engine can decode here. The matrix is allocated once per
run (as an engine's weights are) and each round times ``--decode-tokens`` GEMVs back to back, as decode
times that many tokens; the best round counts, as for the engines (``gemv_gb_s``; ``gemv_burst_gb_s`` is
the fastest single GEMV, for reference). The GEMV is timed in both layouts, ``x @ W.T`` over
``(rows, hidden)`` and ``x @ W`` over ``(hidden, rows)`` (OpenBLAS streams the second up to ~1.8x faster
here), and the faster one sets the ceiling. ``ceiling_ratio`` = decode / ceiling of the measured engine
(``ceiling_ratio_by_layout`` against each layout's GEMV alone). ``per_round`` lists each round alone: the
measured engine's decode, the faster layout's GEMV timed right after it, and their ratio (the machine's
memory sometimes reads ~45 GB/s for minutes where it usually reads ~31, and rounds can straddle the change).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from exo_core.components import ComponentContext
from exo_core.engine import InferenceEngine
from exo_core.models.source import ModelSource, load_config, resolve_model
from exo_core.models.tokenizer import load_tokenizer
from exo_core.plugins import load_plugins
from exo_core.settings import CoreSettings

TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type made books cheaper "
    "and ideas travelled faster than ever before across Europe and beyond. "
)
DEFAULT_LLAMACPP_PYTHON = "/opt/llamacpp-venv/bin/python"


def prompt_ids(source: ModelSource, n: int) -> list[int]:
    """``n`` token ids of ordinary English text."""
    tok = load_tokenizer(source)
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(TEXT)
    return ids[:n]


def rss_bytes() -> int:
    """This process's resident set size (Linux), after returning free heap pages to the system."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def file_tensor_bytes(source: ModelSource) -> int:
    """Bytes of the model file's tensors as stored (GGUF), or of its weight files (safetensors)."""
    if source.format == "gguf":
        from exo_core.models.gguf_file import open_gguf

        return sum(t.nbytes for t in open_gguf(source.path).tensors.values())
    return sum(p.stat().st_size for p in Path(source.path).glob("*.safetensors"))


async def load_engine(
    name: str, source: ModelSource, warm: list[int], overrides: dict[str, Any] | None = None
) -> tuple[InferenceEngine, float, int]:
    """Build engine ``name`` from the registry (its settings updated with ``overrides``) and load the whole
    model; returns it, the load time and the RSS growth over the load and a warm-up prefill."""
    registry = load_plugins().registry
    component = registry.get("engine", name)
    settings = component.settings(**(overrides or {})) if component.settings is not None else None
    engine: InferenceEngine = component.build(
        ComponentContext(core=CoreSettings(), settings=settings, node_id="bench")
    )
    n_layers = load_config(source).n_layers
    rss_before = rss_bytes()
    started = time.perf_counter()
    await engine.load(source, 0, n_layers - 1, n_layers)
    load_s = time.perf_counter() - started
    await engine.forward("warm", np.array(warm))
    await engine.free("warm")
    return engine, load_s, rss_bytes() - rss_before


async def time_engine(engine: InferenceEngine, ids: list[int], n_decode: int) -> tuple[float, float]:
    """One prefill of ``ids`` and ``n_decode`` greedy steps: (prefill tok/s, decode tok/s)."""
    started = time.perf_counter()
    logits = await engine.forward("r", np.array(ids))
    prefill_s = time.perf_counter() - started
    token = int(np.argmax(logits))
    started = time.perf_counter()
    for _ in range(n_decode):
        logits = await engine.forward("r", np.array([token]))
        token = int(np.argmax(logits))
    decode_s = time.perf_counter() - started
    await engine.free("r")
    return len(ids) / prefill_s, n_decode / decode_s


class GemvCeiling:
    """A float32 GEMV over about ``nbytes`` of matrix in both layouts, allocated once, timed like decode.

    The matrices are made once per run, as an engine loads its weights once: a fresh allocation per round
    gave the ceiling extra draws at the machine's occasional fast memory (one large GEMV then reads up to
    ~47 GB/s where it reads ~33 GB/s most of the time). Each :meth:`measure` times ``n`` GEMVs back to back,
    as decode times ``n`` tokens, and keeps each layout's best round and best single call.
    """

    def __init__(self, nbytes: int, cols: int) -> None:
        rows = max(1, nbytes // (4 * cols))
        w = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
        self.layouts = {"x@W.T": w.T, "x@W": np.ascontiguousarray(w.T)}  # (cols, rows): a view, a copy
        self.x = np.ones((1, cols), np.float32)
        self.nbytes = w.nbytes
        self.sustained: dict[str, float] = dict.fromkeys(self.layouts, 0.0)
        self.burst: dict[str, float] = dict.fromkeys(self.layouts, 0.0)

    def measure(self, n: int) -> dict[str, float]:
        """One round: ``n`` GEMVs per layout; updates the best bytes/s (sustained and single call) and
        returns this round's sustained bytes/s per layout."""
        this_round: dict[str, float] = {}
        for layout, w in self.layouts.items():
            best_call = float("inf")
            started = time.perf_counter()
            for _ in range(n):
                call = time.perf_counter()
                self.x @ w
                best_call = min(best_call, time.perf_counter() - call)
            total = time.perf_counter() - started
            this_round[layout] = n * self.nbytes / total
            self.sustained[layout] = max(self.sustained[layout], this_round[layout])
            self.burst[layout] = max(self.burst[layout], self.nbytes / best_call)
        return this_round


LLAMACPP_SCRIPT = r"""
import json, sys, time
import llama_cpp
path, ids, n_decode, extra_bufts = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if not extra_bufts:  # see run_llamacpp
    _default_params = llama_cpp.llama_model_default_params
    def _params():
        p = _default_params()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama_model_default_params = _params
    llama_cpp.llama.llama_cpp.llama_model_default_params = _params
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


def llamacpp_command(
    source: ModelSource, ids: list[int], n_decode: int, python: str | None
) -> list[str] | None:
    """The command that measures llama.cpp on ``source``, or ``None`` when llama.cpp is not available."""
    if source.format != "gguf":
        return None
    args = [str(source.path), json.dumps(ids), str(n_decode)]
    if importlib.util.find_spec("llama_cpp") is not None:
        return [sys.executable, "-c", LLAMACPP_SCRIPT, *args]
    if python is None and Path(DEFAULT_LLAMACPP_PYTHON).is_file():
        python = DEFAULT_LLAMACPP_PYTHON
    return [python, "-c", LLAMACPP_SCRIPT, *args] if python else None


#: whether llama.cpp may use its extra buffer types (CPU repacking, AMX); see :func:`run_llamacpp`
LLAMACPP_EXTRA_BUFTS = {"enabled": True}


def run_llamacpp(cmd: list[str]) -> tuple[float, float] | None:
    """Run the llama.cpp measurement. A CPU that advertises AMX which the (virtual) machine does not enable
    kills llama.cpp's AMX kernels with SIGILL (seen here: Firecracker VMs on Sapphire Rapids); the run is then
    repeated, and later rounds run, without llama.cpp's extra buffer types (AMX and weight repacking), which
    the JSON reports as ``llamacpp_extra_bufts: false``."""
    while True:
        flag = "1" if LLAMACPP_EXTRA_BUFTS["enabled"] else "0"
        proc = subprocess.run([*cmd, flag], capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode in (-4, 132) and LLAMACPP_EXTRA_BUFTS["enabled"]:  # SIGILL
            print("llama.cpp died of SIGILL (AMX?): retrying without extra buffer types", file=sys.stderr)
            LLAMACPP_EXTRA_BUFTS["enabled"] = False
            continue
        break
    if proc.returncode != 0:
        print(f"llama.cpp benchmark failed: {proc.stderr[-2000:]}", file=sys.stderr)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(out["prefill_tok_s"]), float(out["decode_tok_s"])


def parse_args() -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--engine", default="numpy", help="engine name in the plugin registry (numpy, mlx, ...)"
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=104)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each engine keeps its best"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="do not measure the numpy engine beside it"
    )
    parser.add_argument(
        "--llamacpp-python",
        default=os.environ.get("EXO_BENCH_LLAMACPP_PYTHON"),
        help="a Python with llama-cpp-python installed, to measure llama.cpp in a subprocess",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.decode_tokens < 1 or args.prompt_tokens < 1:
        parser.error("--rounds, --decode-tokens and --prompt-tokens must be >= 1")
    if args.llamacpp_python and not os.path.isfile(args.llamacpp_python):
        parser.error(f"--llamacpp-python / $EXO_BENCH_LLAMACPP_PYTHON: no such file {args.llamacpp_python!r}")
    return args


async def main(args: argparse.Namespace) -> int:
    source = resolve_model(args.model)
    config = load_config(source)
    ids = prompt_ids(source, args.prompt_tokens)
    # baseline key -> (engine name, settings overrides)
    baselines: dict[str, tuple[str, dict[str, Any]]] = {}
    if not args.no_baseline:
        if args.engine == "numpy":
            baselines["float32"] = ("numpy", {"weights": "float32"})
        else:
            baselines["numpy"] = ("numpy", {})
    engines: dict[str, InferenceEngine] = {}
    result: dict[str, Any] = {
        "engine": args.engine,
        "model": args.model,
        "prompt_tokens": len(ids),
        "decode_tokens": args.decode_tokens,
        "rounds": args.rounds,
    }
    file_bytes = file_tensor_bytes(source)
    for key, (name, overrides) in {args.engine: (args.engine, {}), **baselines}.items():
        engines[key], load_s, rss = await load_engine(name, source, ids[:8], overrides)
        prefix = "" if key == args.engine else f"{key}_"
        weights = engines[key].memory().weights
        result[f"{prefix}load_s"] = round(load_s, 3)
        result[f"{prefix}weights_bytes"] = weights
        result[f"{prefix}memory_ratio_vs_file"] = round(weights / file_bytes, 3)
        result[f"{prefix}rss_load_bytes"] = rss
        result[f"{prefix}rss_ratio_vs_file"] = round(rss / file_bytes, 3)
    result["file_tensor_bytes"] = file_bytes
    # float32 bytes read per decoded token: every block's matrices plus the output head (an embedding row
    # lookup reads one row), whatever the engine actually stores
    c = config
    per_layer = (
        4
        * c.hidden_size
        * ((c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim + 3 * c.intermediate_size)
    )
    bytes_per_token = c.n_layers * per_layer + 4 * c.vocab_size * c.hidden_size
    llama_cmd = llamacpp_command(source, ids, args.decode_tokens, args.llamacpp_python)
    best: dict[str, list[float]] = {}
    ceiling_gemv = GemvCeiling(bytes_per_token, c.hidden_size)

    def keep(key: str, prefill: float, decode: float) -> None:
        old = best.setdefault(key, [0.0, 0.0])
        best[key] = [max(old[0], prefill), max(old[1], decode)]

    per_round: list[dict[str, float]] = []
    for _ in range(args.rounds):
        round_decode = 0.0
        for name, engine in engines.items():
            round_prefill, decode_tok_s = await time_engine(engine, ids, args.decode_tokens)
            keep(name, round_prefill, decode_tok_s)
            if name == args.engine:
                round_decode = decode_tok_s
        round_gemv = max(ceiling_gemv.measure(args.decode_tokens).values())
        per_round.append(
            {
                "decode_tok_s": round(round_decode, 2),
                "gemv_gb_s": round(round_gemv / 1e9, 2),
                "ceiling_ratio": round(round_decode * bytes_per_token / round_gemv, 3),
            }
        )
        if llama_cmd is not None:
            ref = await anyio.to_thread.run_sync(run_llamacpp, llama_cmd)
            if ref is not None:
                keep("llamacpp", *ref)
    prefill, decode = best[args.engine]
    gemv = ceiling_gemv.sustained
    bandwidth = max(gemv.values())
    ceiling = bandwidth / bytes_per_token
    result.update(
        {
            "prefill_tok_s": round(prefill, 1),
            "decode_tok_s": round(decode, 2),
            "fp32_bytes_per_token": bytes_per_token,
            "gemv_gb_s": {k: round(v / 1e9, 2) for k, v in gemv.items()},
            "gemv_burst_gb_s": {k: round(v / 1e9, 2) for k, v in ceiling_gemv.burst.items()},
            "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "fp32_ceiling_tok_s": round(ceiling, 2),
            "ceiling_ratio": round(decode / ceiling, 3),
            # the ratio against each layout's GEMV alone (``x@W.T`` was the only one measured before)
            "ceiling_ratio_by_layout": {k: round(decode * bytes_per_token / v, 3) for k, v in gemv.items()},
            # each round alone: its decode against the GEMV timed right after it (the machine's memory
            # speed drifts between rounds, which the best-of-rounds figures above hide)
            "per_round": per_round,
        }
    )
    for ref_name in (*baselines, "llamacpp"):
        if ref_name == args.engine or ref_name not in best:
            continue
        ref_prefill, ref_decode = best[ref_name]
        result[f"{ref_name}_prefill_tok_s"] = round(ref_prefill, 1)
        result[f"{ref_name}_decode_tok_s"] = round(ref_decode, 2)
        result[f"prefill_ratio_vs_{ref_name}"] = round(prefill / ref_prefill, 3)
        if ref_name == "llamacpp":
            result["llamacpp_extra_bufts"] = LLAMACPP_EXTRA_BUFTS["enabled"]
        result[f"decode_ratio_vs_{ref_name}"] = round(decode / ref_decode, 3)
    for key in baselines:
        result[f"{key}_ceiling_ratio"] = round(best[key][1] / ceiling, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main, parse_args()))
