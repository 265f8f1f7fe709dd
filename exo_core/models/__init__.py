"""Models: registry and sources, GGUF/safetensors readers, tokenizer, chat template, sampling.

Heavy libraries (``gguf``, ``tokenizers``, ``jinja2``, ``huggingface_hub``) are imported only when used.
"""

from __future__ import annotations

from exo_core.models.chat import chat_template, render_chat
from exo_core.models.config import ModelConfig
from exo_core.models.errors import ModelError, ModelFormatError, ModelNotFoundError
from exo_core.models.sampling import make_rng, sample, token_logprob, top_logprobs
from exo_core.models.source import (
    DEFAULT_MODEL,
    REGISTRY,
    ModelSource,
    ensure_layers,
    load_config,
    open_weights,
    resolve_model,
)
from exo_core.models.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "IncrementalDetokenizer",
    "ModelConfig",
    "ModelError",
    "ModelFormatError",
    "ModelNotFoundError",
    "ModelSource",
    "Tokenizer",
    "chat_template",
    "ensure_layers",
    "load_config",
    "load_tokenizer",
    "make_rng",
    "open_weights",
    "render_chat",
    "resolve_model",
    "sample",
    "token_logprob",
    "top_logprobs",
]
