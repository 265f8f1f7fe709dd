"""RoPE frequencies shared by every engine: the model's theta and scaling (linear, llama3)."""

from __future__ import annotations

import math

import numpy as np

from exo_core.models.config import ModelConfig


def rope_inv_freq(config: ModelConfig, rope_freqs: np.ndarray | None = None) -> np.ndarray:
    """RoPE inverse frequencies ``(head_dim/2,)`` with the model's theta and scaling (linear, llama3)."""
    hd = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind not in (None, "default"):
        raise ValueError(f"RoPE scaling {kind!r} is not supported (supported: linear, llama3)")
    if rope_freqs is not None:  # GGUF llama3 models store the per-frequency divisors as a tensor
        inv = inv / rope_freqs.astype(np.float64)
    return inv.astype(np.float32)
