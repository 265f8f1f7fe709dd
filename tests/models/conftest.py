"""Fixtures of the model-layer tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from exo_core.models.source import ModelSource, resolve_model

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"


@pytest.fixture(scope="session")
def tiny() -> ModuleType:
    """The tiny random model generator (tests/reference/tiny_llama.py)."""
    spec = importlib.util.spec_from_file_location("tiny_llama", REFERENCE_DIR / "tiny_llama.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tiny_llama", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def default_source() -> ModelSource:
    """The default model, resolved from the installed wheel."""
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def llamacpp_fixture() -> dict[str, Any]:
    """Committed llama.cpp reference output for the default model."""
    return dict(json.loads((REFERENCE_DIR / "llamacpp_smollm2.json").read_text(encoding="utf-8")))
