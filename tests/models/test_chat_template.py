"""Chat templates rendered from the model's own jinja template."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from exo_core.models.chat import render_chat
from exo_core.models.errors import ModelFormatError
from exo_core.models.source import ModelSource, resolve_model
from exo_core.models.tokenizer import load_tokenizer


def test_default_model_chatml_with_default_system_prompt(default_source: ModelSource) -> None:
    text = render_chat(default_source, [{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = load_tokenizer(default_source).encode(text)
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2


def test_given_system_prompt_and_no_generation_prompt(default_source: ModelSource) -> None:
    msgs = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    text = render_chat(default_source, msgs, add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\nHello.<|im_end|>\n")
    assert "SmolLM" not in text


def test_hf_template_and_errors(tiny: ModuleType, tmp_path: Path) -> None:
    folder = tiny.write("llama", tmp_path / "m")
    source = resolve_model(str(folder))
    assert render_chat(source, [{"role": "user", "content": "x"}]) == "<s>user: x</s>\n<s>assistant: "
    with pytest.raises(ValueError, match="role"):
        render_chat(source, [{"content": "x"}])
    raising = "{{ raise_exception('only user messages') }}"
    with pytest.raises(ModelFormatError, match="only user messages"):
        render_chat(source, [{"role": "user", "content": "x"}], template=raising)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="no chat template"):
        render_chat(resolve_model(str(folder)), [{"role": "user", "content": "x"}])
