"""Deterministic tiny random Llama-family models in Hugging Face format (config.json, safetensors,
tokenizer.json), shared by the reference script (run with transformers) and the tests (run with our engine).

Only numpy, safetensors and tokenizers are needed, so the same files come out in the project venv and in the
throwaway torch venv. Values are drawn from a seeded PCG64 and rounded to bfloat16-representable floats so the
BF16 and F32 writers store the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    # Llama 3 style: GQA, untied output head, llama3 RoPE scaling, float32 weights, one file.
    "llama": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 320,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        "tie_word_embeddings": False,
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "_dtype": "F32",
        "_shards": 1,
    },
    # Qwen2 style: q/k/v bias, tied embeddings, bfloat16 weights split over an index of three files.
    "qwen2": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "vocab_size": 320,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "_dtype": "BF16",
        "_shards": 3,
    },
}

#: Models written only as GGUF, wide enough for the K-quants' 256-value super-blocks (the quantized-kernel
#: fixtures of tests/reference/make_quant_fixtures.py); not part of the transformers fixture.
GGUF_VARIANTS: dict[str, dict[str, Any]] = {
    "kq": {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 256,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 320,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}

#: Token ids the fixture is computed on (any ids below vocab_size).
PROMPT_IDS = [1, 17, 250, 3, 99, 199, 42, 7, 300, 12, 64, 128, 5, 260]
SEED = 20240607


def _bf16_round(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even
    return bits.view(np.float32)


def tensors(variant: str) -> dict[str, np.ndarray]:
    """The model's weights by Hugging Face name, float32 (bfloat16-representable)."""
    cfg = {**VARIANTS, **GGUF_VARIANTS}[variant]
    rng = np.random.Generator(np.random.PCG64(SEED + len(variant)))
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // nh

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return _bf16_round(rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale))

    def norm(n: int) -> np.ndarray:
        return _bf16_round(1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32))

    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": mat(v, d, 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm(d)
        out[p + "self_attn.q_proj.weight"] = mat(nh * hd, d, d**-0.5)
        out[p + "self_attn.k_proj.weight"] = mat(nkv * hd, d, d**-0.5)
        out[p + "self_attn.v_proj.weight"] = mat(nkv * hd, d, d**-0.5)
        if cfg["model_type"] == "qwen2":
            for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
                out[p + f"self_attn.{n}_proj.bias"] = _bf16_round(
                    0.2 * rng.standard_normal(rows, dtype=np.float32)
                )
        out[p + "self_attn.o_proj.weight"] = mat(d, nh * hd, (nh * hd) ** -0.5)
        out[p + "post_attention_layernorm.weight"] = norm(d)
        out[p + "mlp.gate_proj.weight"] = mat(f, d, d**-0.5)
        out[p + "mlp.up_proj.weight"] = mat(f, d, d**-0.5)
        out[p + "mlp.down_proj.weight"] = mat(d, f, f**-0.5)
    out["model.norm.weight"] = norm(d)
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = mat(v, d, d**-0.5)
    return out


def _tokenizer_json(vocab_size: int) -> dict[str, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel.alphabet()
    base = ["<unk>", "<s>", "</s>", *sorted(byte_level)]
    vocab = {t: i for i, t in enumerate(base)}
    merges: list[tuple[str, str]] = []
    for a, b in [("t", "h"), ("th", "e"), ("Ġ", "t"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n")]:
        if len(vocab) >= vocab_size:
            break
        merges.append((a, b))
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    return dict(json.loads(tok.to_str()))


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant: {% endif %}"
)


def write(variant: str, folder: Path) -> Path:
    """Write the tiny model ``variant`` as a Hugging Face folder; return the folder."""
    from safetensors.numpy import save_file

    cfg = VARIANTS[variant]
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in cfg.items() if not k.startswith("_")}
    config["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    weights = tensors(variant)
    names = list(weights)
    n_files = cfg["_shards"]
    chunks = [names[i::n_files] for i in range(n_files)] if n_files > 1 else [names]
    weight_map: dict[str, str] = {}
    for i, chunk in enumerate(chunks):
        fname = "model.safetensors" if n_files == 1 else f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
        data = {}
        for n in sorted(chunk):
            arr = weights[n]
            if cfg["_dtype"] == "BF16":  # stored as raw uint16 words; the header says BF16 (patched below)
                arr = (arr.view(np.uint32) >> 16).astype(np.uint16)
            data[n] = np.ascontiguousarray(arr)
            weight_map[n] = fname
        save_file(data, str(folder / fname))
        if cfg["_dtype"] == "BF16":
            _retype_u16_as_bf16(folder / fname)
    if n_files > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    (folder / "tokenizer.json").write_text(json.dumps(_tokenizer_json(cfg["vocab_size"])), encoding="utf-8")
    tok_cfg = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
    return folder


def _retype_u16_as_bf16(path: Path) -> None:
    """Rewrite a safetensors header's U16 dtypes as BF16 (offsets are relative to the data, so they stay)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    for key, meta in header.items():
        if key != "__metadata__" and meta["dtype"] == "U16":
            meta["dtype"] = "BF16"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter row order for q/k (Hugging Face half-split -> adjacent pairs)."""
    rows = w.shape[0]
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(variant: str, path: Path, qtype_name: str = "F32", *, vocab: bool = False) -> Path:
    """Write the tiny model as a GGUF the way llama.cpp's converter lays it out (permuted q/k for llama).

    Matrices are stored as ``qtype_name`` (F32, F16, Q8_0, ...); norms stay F32. With ``vocab``, the
    byte-level BPE vocabulary of :func:`_tokenizer_json` as GGUF tokenizer metadata (what llama.cpp needs to
    load the file), else no tokenizer metadata.
    """
    import gguf
    from gguf.quants import quantize

    cfg = {**VARIANTS, **GGUF_VARIANTS}[variant]
    arch = cfg["model_type"]
    qtype = gguf.GGMLQuantizationType[qtype_name]
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    if vocab:
        _add_vocab(w, cfg["vocab_size"])
    scaling = cfg.get("rope_scaling")
    if scaling and scaling["rope_type"] == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    for name, arr in tensors(variant).items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{layer}.{_GGUF_NAMES[rest]}"
            if arch == "llama" and rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                heads = cfg["num_attention_heads"] if "q_proj" in rest else cfg["num_key_value_heads"]
                arr = permute_qk(arr, heads)
        if arr.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def requantize_gguf(src: Path, dst: Path, qtype_name: str, types: dict[str, str] | None = None) -> Path:
    """Write ``dst``: ``src``'s metadata, its 1-D tensors as F32 and its matrices dequantized and quantized
    again with gguf-py as ``qtype_name`` (or ``types[tensor name]``), as llama.cpp's quantizer does from an
    F32 copy."""
    import gguf
    from gguf.quants import dequantize, quantize

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, str(reader.fields["general.architecture"].contents()))
    for name, fld in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        sub = fld.types[-1] if fld.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, fld.contents(), fld.types[0], sub_type=sub)
    for t in reader.tensors:
        data = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        data = data.reshape([int(d) for d in reversed(t.shape)])
        qtype = gguf.GGMLQuantizationType[(types or {}).get(t.name, qtype_name)]
        if data.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _add_vocab(w: Any, vocab_size: int) -> None:
    """GPT-2 style tokenizer metadata for the tiny vocabulary (padded with unused tokens to
    ``vocab_size``)."""
    model = _tokenizer_json(vocab_size)["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    tokens += [f"<unused{i}>" for i in range(vocab_size - len(tokens))]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in ("<unk>", "<s>", "</s>") or t.startswith("<unused") else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])


def llama3_rope_factors(cfg: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors llama.cpp's converter stores as ``rope_freqs.weight`` for llama3 scaling."""
    sc = cfg["rope_scaling"]
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    old = sc["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / sc["low_freq_factor"], old / sc["high_freq_factor"]
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(sc["factor"])
        else:
            smooth = (old / wavelen - sc["low_freq_factor"]) / (
                sc["high_freq_factor"] - sc["low_freq_factor"]
            )
            out.append(1.0 / ((1 - smooth) / sc["factor"] + smooth))
    return np.array(out, dtype=np.float32)
