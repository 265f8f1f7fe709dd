"""Tokenizer ids against llama.cpp, and incremental detokenization."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from exo_core.models.errors import ModelFormatError
from exo_core.models.source import ModelSource, resolve_model
from exo_core.models.tokenizer import load_tokenizer, tokenizer_from_gguf


def test_ids_equal_llamacpp(default_source: ModelSource, llamacpp_fixture: dict[str, Any]) -> None:
    tok = load_tokenizer(default_source)
    cases = llamacpp_fixture["q4_1"]["tokenizer"]
    kinds = {"emoji": "🤖", "cjk": "日本", "digits": "1234", "tabs": "\t\t", "special": "<|im_start|>"}
    for kind, needle in kinds.items():
        assert any(needle in c["text"] for c in cases), kind
    for case in cases:
        assert tok.encode(case["text"]) == case["ids"], case["text"]


def test_round_trip_and_specials(default_source: ModelSource) -> None:
    tok = load_tokenizer(default_source)
    assert load_tokenizer(default_source) is tok
    assert (tok.bos_token_id, tok.eos_token_ids, tok.add_bos) == (1, (2,), False)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    text = "Hi <|im_end|> 日本 🤖 \t x"
    ids = tok.encode(text)
    assert 2 in ids and tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<|im_end|>", "")


def test_incremental_detokenizer_multibyte(default_source: ModelSource) -> None:
    tok = load_tokenizer(default_source)
    text = "Emoji 🤖🚀 family 👨‍👩‍👧 and 日本語 café, done."
    ids = tok.encode(text)
    det = tok.detokenizer()
    pieces = [det.add(i) for i in ids]
    assert "".join(pieces) + det.flush() == text == det.text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # some emoji bytes span several tokens and were held back


def test_detokenizer_flushes_incomplete_tail(default_source: ModelSource) -> None:
    tok = load_tokenizer(default_source)
    ids = tok.encode("🤖")
    assert len(ids) > 1
    det = tok.detokenizer()
    assert det.add(ids[0]) == ""
    assert det.flush() == "\ufffd"


def test_hf_tokenizer_json(tiny: ModuleType, tmp_path: Path) -> None:
    source = resolve_model(str(tiny.write("llama", tmp_path / "m")))
    tok = load_tokenizer(source)
    assert (tok.bos_token_id, tok.eos_token_ids) == (1, (2,))
    ids = tok.encode("the <s> there")
    assert 1 in ids and tok.decode(ids) == "the <s> there"


def test_unsupported_gguf_tokenizers_are_clear_errors() -> None:
    with pytest.raises(ModelFormatError, match="'llama' is not supported"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "llama"}, where="x.gguf")
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.pre": "weird"}
    with pytest.raises(ModelFormatError, match="pre-tokenizer 'weird'"):
        tokenizer_from_gguf(meta, where="x.gguf")
