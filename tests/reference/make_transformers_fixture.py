"""Make ``transformers_tiny.json``: logits of the tiny random models (``tiny_llama.py``) from HF transformers.

Why this reference: the default model is a GGUF, so llama.cpp checks the GGUF path; the Hugging Face
path (safetensors, BF16, sharded index, config.json fields, Qwen2 q/k/v bias, untied heads, llama3 RoPE
scaling) needs an independent implementation too, and transformers is *the* reference for that format.
torch is too large to add to the project or to install in CI, so this script runs in a throwaway venv and
its output is committed; the tests regenerate the identical tiny models from the same seed
(``tiny_llama.write``) and compare our engine's logits with the fixture. Tiny random weights exercise
every code path without shipping a real checkpoint.

Usage (separate venv; torch 2.13.0 CPU)::

    python3 -m venv /opt/torch-venv
    /opt/torch-venv/bin/pip install torch==2.13.0 transformers safetensors tokenizers numpy jinja2
    /opt/torch-venv/bin/python tests/reference/make_transformers_fixture.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

# run as a script: Python puts this directory first on the import path, so the sibling imports
import tiny_llama

POSITIONS = [0, 6, len(tiny_llama.PROMPT_IDS) - 1]
GREEDY_TOKENS = 12
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def main() -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    out: dict[str, object] = {
        "generator": "tests/reference/make_transformers_fixture.py, "
        f"transformers {transformers.__version__}, "
        f"torch {torch.__version__}",
        "prompt_ids": tiny_llama.PROMPT_IDS,
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for variant in tiny_llama.VARIANTS:
            folder = tiny_llama.write(variant, Path(tmp) / variant)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            model.eval()
            ids = torch.tensor([tiny_llama.PROMPT_IDS])
            with torch.no_grad():
                logits = model(ids).logits[0].numpy()
                gen = model.generate(
                    ids,
                    max_new_tokens=GREEDY_TOKENS,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                    min_new_tokens=GREEDY_TOKENS,
                )
            tok = AutoTokenizer.from_pretrained(folder)
            rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
            out["variants"][variant] = {  # type: ignore[index]
                "logits": {str(p): [round(float(x), 5) for x in logits[p]] for p in POSITIONS},
                "greedy": [int(t) for t in gen[0, len(tiny_llama.PROMPT_IDS) :]],
                "chat": {"messages": CHAT, "rendered": rendered},
                "encode": {
                    "text": "the then in there",
                    "ids": tok.encode("the then in there", add_special_tokens=False),
                },
            }
            print(variant, "top-1 at last position:", int(np.argmax(logits[-1])), file=sys.stderr)
    path = Path(__file__).with_name("transformers_tiny.json")
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
