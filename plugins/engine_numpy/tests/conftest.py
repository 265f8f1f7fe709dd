"""Fixtures of the numpy engine tests: the default model and the tiny reference models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REFERENCE_DIR = Path(__file__).resolve().parents[3] / "tests" / "reference"


def _load_tiny() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tiny_llama", REFERENCE_DIR / "tiny_llama.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tiny_llama", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny() -> ModuleType:
    """The tiny random model generator (tests/reference/tiny_llama.py)."""
    return _load_tiny()


@pytest.fixture(scope="session")
def llamacpp_fixture() -> dict[str, Any]:
    """Committed llama.cpp reference output for the default model."""
    return dict(json.loads((REFERENCE_DIR / "llamacpp_smollm2.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def transformers_fixture() -> dict[str, Any]:
    """Committed transformers reference output for the tiny models."""
    return dict(json.loads((REFERENCE_DIR / "transformers_tiny.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def tiny_folders(tiny: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny variant written once as a Hugging Face folder."""
    root = tmp_path_factory.mktemp("tiny")
    return {v: tiny.write(v, root / v) for v in tiny.VARIANTS}
