"""Make the quantized-kernel fixtures: GGUF files quantized by llama.cpp's own quantizer, and llama.cpp's
logits on them.

Writes:
  * ``tests/fixtures/quant/kq-<TYPE>.gguf``: the tiny one-block ``kq`` model (tests/reference/tiny_llama.py,
    wide enough for K-quant super-blocks) quantized by ``llama_model_quantize`` from its F32 GGUF to
    Q4_K_M, Q5_K_M, Q6_K, Q3_K_M, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (~300 KB each);
  * ``tests/reference/llamacpp_quant.json``:
    - ``tiny``: per type, the GGML type and sha256 of every tensor, llama.cpp's top-10 logits at every
      position of ``PROMPT_IDS`` and its 16 greedy tokens;
    - ``smollm2``: the default model as shipped (Q4_1) and requantized by llama.cpp from an F32 copy to
      Q8_0, Q6_K and Q4_K_M: per prompt of make_llamacpp_fixture.PROMPTS, top-10 logits at three positions
      and 32 greedy tokens; plus each file's sha256 (the tests re-make Q8_0 with gguf-py and compare).

llama.cpp runs with its defaults (8-bit activations in quantized matmuls, f16 KV cache). Building
llama-cpp-python takes minutes, so the output is committed; run in a separate venv::

    python3 -m venv /opt/llamacpp-venv
    /opt/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36 gguf numpy tokenizers
    /opt/llamacpp-venv/bin/python tests/reference/make_quant_fixtures.py SmolLM2-135M-Instruct.Q4_1.gguf \
        [--keep-dir DIR]   # DIR keeps the default model's requantized files (for tests/benchmarks)
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# run as a script: Python puts this directory first on the import path, so the siblings import

import make_llamacpp_fixture as base  # noqa: E402
import tiny_llama  # noqa: E402

FIXTURE_DIR = HERE.parent / "fixtures" / "quant"
#: every type of the tiny model is committed: llama.cpp stores its tied embedding as Q6_K in most of them,
#: which gguf-py cannot write
TINY_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
SMOLLM2_TYPES = ("Q8_0", "Q6_K", "Q4_K_M")
TINY_GREEDY = 16


def no_extra_bufts() -> None:
    """Run llama.cpp without its extra buffer types (AMX, weight repacking): on CPUs that advertise AMX
    which the (virtual) machine does not enable, its AMX kernels die of SIGILL. Set
    ``EXO_LLAMACPP_NO_EXTRA_BUFTS=1`` to apply."""
    import llama_cpp

    default = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = params
    llama_cpp.llama.llama_cpp.llama_model_default_params = params  # type: ignore[attr-defined]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quantize(src: Path, dst: Path, ftype_name: str) -> None:
    """``dst`` = ``src`` quantized by llama.cpp to ``LLAMA_FTYPE_MOSTLY_<ftype_name>``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {ftype_name} failed with {rc}")


def tensor_types(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def tensor_sha256(path: Path) -> dict[str, str]:
    """sha256 of each tensor's data (what the tests compare gguf-py's re-made files against)."""
    import gguf

    return {
        t.name: hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest()
        for t in gguf.GGUFReader(path).tensors
    }


def run_ids(path: Path, ids: list[int], n_greedy: int) -> dict[str, Any]:
    """llama.cpp's top-10 at every position of ``ids`` and its greedy continuation."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
    greedy: list[int] = []
    for _ in range(n_greedy):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        llm.eval([nxt])
    return {"positions": {str(p): base.topk(scores[p]) for p in range(len(ids))}, "greedy": greedy}


def run_prompts(path: Path) -> list[dict[str, Any]]:
    """Per prompt: ids, top-10 at three positions, 32 greedy tokens (llama.cpp defaults)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    out = []
    for prompt in base.PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        positions = sorted({0, len(ids) // 2, len(ids) - 1})
        greedy: list[int] = []
        for _ in range(base.GREEDY_TOKENS):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        out.append(
            {
                "text": prompt,
                "ids": ids,
                "positions": {str(p): base.topk(scores[p]) for p in positions},
                "greedy": greedy,
            }
        )
    return out


def main() -> int:
    import llama_cpp

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="the default model's GGUF (SmolLM2-135M-Instruct.Q4_1.gguf)")
    parser.add_argument("--out", type=Path, default=HERE / "llamacpp_quant.json")
    parser.add_argument("--keep-dir", type=Path, help="keep the default model's requantized files here")
    args = parser.parse_args()
    if os.environ.get("EXO_LLAMACPP_NO_EXTRA_BUFTS") == "1":
        no_extra_bufts()
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "generator": f"tests/reference/make_quant_fixtures.py, llama-cpp-python {llama_cpp.__version__}",
        "extra_bufts": os.environ.get("EXO_LLAMACPP_NO_EXTRA_BUFTS") != "1",
        "top_k": base.TOP_K,
        "tiny": {"variant": "kq", "prompt_ids": tiny_llama.PROMPT_IDS, "types": {}},
        "smollm2": {"model": args.model.name, "types": {}},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        f32 = tiny_llama.write_gguf("kq", tmp / "kq-F32.gguf", vocab=True)
        for name in ("F32", *TINY_TYPES):
            if name == "F32":
                path = f32
            else:
                path = FIXTURE_DIR / f"kq-{name}.gguf"
                quantize(f32, path, name)
            entry = {
                "sha256": sha256(path),
                "tensors": tensor_types(path),
                "tensor_sha256": tensor_sha256(path),
            }
            entry.update(run_ids(path, tiny_llama.PROMPT_IDS, TINY_GREEDY))
            result["tiny"]["types"][name] = entry
            print(f"tiny {name}: {path.stat().st_size} bytes", file=sys.stderr)

        keep = args.keep_dir or tmp
        keep.mkdir(parents=True, exist_ok=True)
        smol_f32 = tmp / "smollm2-F32.gguf"
        base.make_f32_copy(args.model, smol_f32)
        result["smollm2"]["types"]["Q4_1"] = {
            "sha256": sha256(args.model),
            "prompts": run_prompts(args.model),
        }
        for name in SMOLLM2_TYPES:
            path = keep / f"SmolLM2-135M-Instruct.{name}.gguf"
            quantize(smol_f32, path, name)
            result["smollm2"]["types"][name] = {
                "sha256": sha256(path),
                "tensors": tensor_types(path),
                "tensor_sha256": tensor_sha256(path),
                "prompts": run_prompts(path),
            }
            print(f"smollm2 {name}: {path.stat().st_size} bytes", file=sys.stderr)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
