"""The Hugging Face path against transformers (committed fixture from tests/reference/), and the GGUF path on
the same tiny models written the way llama.cpp's converter writes them (permuted q/k, rope_freqs)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from exo_engine_numpy.engine import NumpyEngine

from exo_core.models.chat import render_chat
from exo_core.models.source import ModelSource, resolve_model
from exo_core.models.tokenizer import load_tokenizer


async def _check_logits(source: ModelSource, n_layers: int, ref: dict[str, Any], prompt: list[int]) -> None:
    engine = NumpyEngine()
    await engine.load(source, 0, n_layers - 1, n_layers)
    logits = await engine.forward("r", np.array(prompt), all_logits=True)
    assert logits.dtype == np.float32 and logits.shape == (len(prompt), len(ref["logits"]["0"]))
    for pos, row in ref["logits"].items():
        np.testing.assert_allclose(logits[int(pos)], row, atol=1e-4, rtol=0)
    out: list[int] = []
    last = logits[-1]
    for _ in ref["greedy"]:
        out.append(int(np.argmax(last)))
        last = await engine.forward("r", np.array([out[-1]]))
    assert out == ref["greedy"]


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
async def test_hf_folder_matches_transformers(
    variant: str, tiny_folders: dict[str, Path], tiny: ModuleType, transformers_fixture: dict[str, Any]
) -> None:
    source = resolve_model(str(tiny_folders[variant]))
    ref = transformers_fixture["variants"][variant]
    await _check_logits(
        source, tiny.VARIANTS[variant]["num_hidden_layers"], ref, transformers_fixture["prompt_ids"]
    )


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", ["F32", "F16"])
async def test_gguf_conversion_matches_transformers(
    variant: str, qtype: str, tiny: ModuleType, tmp_path: Path, transformers_fixture: dict[str, Any]
) -> None:
    path = tiny.write_gguf(variant, tmp_path / f"{variant}.gguf", qtype)
    source = resolve_model(str(path))
    ref = transformers_fixture["variants"][variant]
    await _check_logits(
        source, tiny.VARIANTS[variant]["num_hidden_layers"], ref, transformers_fixture["prompt_ids"]
    )


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_hf_tokenizer_and_chat_template_match_transformers(
    variant: str, tiny_folders: dict[str, Path], transformers_fixture: dict[str, Any]
) -> None:
    source = resolve_model(str(tiny_folders[variant]))
    ref = transformers_fixture["variants"][variant]
    assert render_chat(source, ref["chat"]["messages"]) == ref["chat"]["rendered"]
    tok = load_tokenizer(source)
    assert tok.encode(ref["encode"]["text"], add_special_tokens=False) == ref["encode"]["ids"]
