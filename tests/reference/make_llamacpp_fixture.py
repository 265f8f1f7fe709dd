"""Make ``llamacpp_smollm2.json``: reference token ids and logits from llama.cpp for the default model.

llama.cpp is an implementation independent of ours (C++, its own GGUF reader, dequantization and tokenizer),
so agreeing with it checks our GGUF reading, q/k permutation, RoPE, attention and tokenizer.

Two runs:
  * ``q4_1``: the shipped Q4_1 file as llama.cpp runs it by default (8-bit activations in the quantized
    matmuls, f16 KV cache), so logits differ from a float32 engine by up to ~0.7 (mostly a common offset):
    tests compare top-k with a tolerance.
  * ``f32``: an F32 copy of the same GGUF (every tensor dequantized with ``gguf.quants`` and written with
    ``gguf.GGUFWriter``, metadata copied) run with an f32 KV cache: a float32 engine should match it to ~1e-3
    and produce the same greedy tokens.

Building ``llama-cpp-python`` takes ~400 s on 2 cores, too slow for CI, so its output is committed. Run it in
a separate venv (never the project's)::

    python3 -m venv /opt/llamacpp-venv
    /opt/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36 gguf numpy
    /opt/llamacpp-venv/bin/python tests/reference/make_llamacpp_fixture.py MODEL.gguf
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

TOP_K = 10
GREEDY_PROMPT = "The capital of France is"
GREEDY_TOKENS = 32

#: Prompts whose logits are recorded (raw text and ChatML-rendered chats, special tokens parsed).
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "def fibonacci(n):\n    ",
    "1, 2, 3, 4, 5, 6,",
    "Water boils at a temperature of",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Les fleurs du jardin sont",
]

#: Strings whose token ids are recorded (ordinary text, unicode, emoji, digits, whitespace runs, specials).
TOKENIZER_STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "tabs\tand\t\ttabs\nnew\n\nlines\r\n",
    "digits 1234567890 and 3.14159, -42",
    "café naïve résumé Ångström",
    "日本語のテキスト、中文文本",
    "emoji 🤖🚀 and family 👨‍👩‍👧‍👦",
    "Здравствуй, мир! \u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u03ba\u03cc\u03c3\u03bc\u03b5",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after",
    "mixed<|im_end|>specials<|im_start|>",
    "    def f(x):\n        return x ** 2\n",
    "I'm can't won't they're we've",
    "",
    "a" * 40,
    "\u00a0non-breaking\u2003em space",
    "URL https://example.com/path?q=1&r=2#frag",
]


def make_f32_copy(src: Path, dst: Path) -> None:
    """Write ``dst``: ``src`` with every tensor dequantized to F32 and the metadata copied."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    for t in reader.tensors:
        data = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        writer.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def topk(row: np.ndarray) -> dict[str, list[float] | list[int]]:
    idx = np.argsort(-row, kind="stable")[:TOP_K]
    return {"ids": [int(i) for i in idx], "values": [round(float(row[i]), 5) for i in idx]}


def run(model_path: Path, *, f32_kv: bool) -> dict[str, object]:
    import llama_cpp

    kwargs: dict[str, object] = {}
    if f32_kv:
        kwargs.update(type_k=0, type_v=0)  # GGML_TYPE_F32
    llm = llama_cpp.Llama(str(model_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False, **kwargs)
    out: dict[str, object] = {"prompts": []}
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        positions = sorted({0, len(ids) // 2, len(ids) - 1})
        out["prompts"].append(  # type: ignore[attr-defined]
            {"text": prompt, "ids": ids, "positions": {str(p): topk(scores[p]) for p in positions}}
        )
    ids = llm.tokenize(GREEDY_PROMPT.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    greedy: list[int] = []
    for _ in range(GREEDY_TOKENS):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        llm.eval([nxt])
    out["greedy"] = {"prompt": GREEDY_PROMPT, "tokens": greedy}
    if not f32_kv:
        out["tokenizer"] = [
            {"text": s, "ids": llm.tokenize(s.encode(), add_bos=False, special=True)}
            for s in TOKENIZER_STRINGS
        ]
    return out


def main() -> int:
    import llama_cpp

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="the default model's GGUF (SmolLM2-135M-Instruct.Q4_1.gguf)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("llamacpp_smollm2.json"))
    args = parser.parse_args()
    result: dict[str, object] = {
        "generator": f"tests/reference/make_llamacpp_fixture.py, llama-cpp-python {llama_cpp.__version__}",
        "model": args.model.name,
        "top_k": TOP_K,
        "q4_1": run(args.model, f32_kv=False),
    }
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "model-f32.gguf"
        make_f32_copy(args.model, f32)
        result["f32"] = run(f32, f32_kv=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
