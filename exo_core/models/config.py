"""Model hyper-parameters, read the same way from GGUF metadata and from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exo_core.models.errors import ModelFormatError

log = logging.getLogger(__name__)

#: Architectures the engines implement, by GGUF ``general.architecture`` / HF ``model_type``.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    """What an engine, the partitioner and the orchestration need to know about a model.

    Attributes:
        architecture: ``llama``, ``mistral`` or ``qwen2``.
        n_layers: number of transformer blocks.
        hidden_size: width of the residual stream (the hidden state a shard passes on).
        intermediate_size: width of the MLP.
        n_heads: attention heads; ``n_kv_heads`` key/value heads (GQA); ``head_dim`` per head.
        vocab_size: number of logits.
        rope_theta: RoPE base; ``rope_scaling``: HF-style dict (``rope_type`` linear/llama3 ...) or ``None``.
        rms_norm_eps: RMSNorm epsilon.
        context_length: maximum positions the model was trained for.
        bos_token_id / eos_token_ids: special ids (``eos_token_ids`` may hold several, e.g. Llama 3).
        tie_word_embeddings: the output head is the token embedding.
        attention_bias: q/k/v projections carry a bias (Qwen2).
    """

    architecture: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    context_length: int = 4096
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def eos_token_id(self) -> int | None:
        """The first end-of-sequence id (``None`` if the model declares none)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def head_in_layers(self) -> int:
        """The output head's weights in units of one block's, rounded (SmolLM2-135M: 8).

        A decode step reads the whole head on the last shard as it reads every block, so a plan counts the
        head as this many layers for the node that holds it (``exo_core.topology.partition.fold_head``).
        """
        block = self.hidden_size * (
            (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
            + self.n_heads * self.head_dim
            + 3 * self.intermediate_size
        )
        return round(self.vocab_size * self.hidden_size / block) if block > 0 else 0

    def check_layer_range(self, first_layer: int, last_layer: int) -> None:
        """Raise ``ValueError`` unless ``0 <= first_layer <= last_layer < n_layers``."""
        if not 0 <= first_layer <= last_layer < self.n_layers:
            raise ValueError(
                f"invalid layer range {first_layer}..{last_layer}: "
                f"the model has layers 0..{self.n_layers - 1}"
            )


def _check_arch(arch: str, where: str) -> str:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFormatError(
            f"{where}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return arch


def config_from_gguf(
    metadata: dict[str, Any], *, has_output_tensor: bool, has_qkv_bias: bool, where: str
) -> ModelConfig:
    """Build a :class:`ModelConfig` from GGUF metadata (``{arch}.block_count`` etc.)."""
    arch = _check_arch(str(metadata.get("general.architecture", "")), where)

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelFormatError(f"{where}: GGUF metadata lacks {arch}.{key}")
        return value

    n_heads = int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv", n_heads))
    hidden = int(get("embedding_length"))
    vocab = metadata.get(f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(metadata.get("tokenizer.ggml.tokens", ()))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", hidden // n_heads))
    scaling: dict[str, Any] | None = None
    scaling_type = metadata.get(f"{arch}.rope.scaling.type")
    if scaling_type in ("linear", "yarn") or metadata.get(f"{arch}.rope.scale_linear"):
        factor = metadata.get(f"{arch}.rope.scaling.factor", metadata.get(f"{arch}.rope.scale_linear", 1.0))
        if scaling_type == "yarn":
            raise ModelFormatError(f"{where}: YaRN RoPE scaling is not supported")
        scaling = {"rope_type": "linear", "factor": float(factor)}
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    eot = metadata.get("tokenizer.ggml.eot_token_id")
    eos_ids = tuple(dict.fromkeys(int(i) for i in (eos, eot) if i is not None))
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    return ModelConfig(
        architecture=arch,
        n_layers=int(get("block_count")),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab_size=int(vocab),
        rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        context_length=int(metadata.get(f"{arch}.context_length", 4096)),
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
        tie_word_embeddings=not has_output_tensor,
        attention_bias=has_qkv_bias,
    )


def config_from_hf(folder: Path) -> ModelConfig:
    """Build a :class:`ModelConfig` from ``folder/config.json`` (a Hugging Face transformers config)."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(
            f"{folder} has no config.json (a Hugging Face model folder needs one)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not readable JSON: {exc}") from exc
    return config_from_hf_dict(raw, where=str(path))


def config_from_hf_dict(raw: dict[str, Any], *, where: str) -> ModelConfig:
    """Build a :class:`ModelConfig` from a parsed ``config.json``."""
    arch = _check_arch(str(raw.get("model_type", "")), where)
    try:
        n_heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        eos = raw.get("eos_token_id")
        eos_ids = tuple(int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
        return ModelConfig(
            architecture=arch,
            n_layers=int(raw["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            n_heads=n_heads,
            n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
            head_dim=int(raw.get("head_dim") or hidden // n_heads),
            vocab_size=int(raw["vocab_size"]),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rope_scaling=raw.get("rope_scaling"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6 if arch == "qwen2" else 1e-5)),
            context_length=int(raw.get("max_position_embeddings", 4096)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", arch == "qwen2")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where}: missing or invalid field {exc}") from exc
