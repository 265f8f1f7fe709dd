from __future__ import annotations

from pathlib import Path

from exo_core.orchestration.catalog import Catalog, model_id_for_path


def test_model_id_for_path() -> None:
    assert model_id_for_path(Path("/m/SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct.Q4_1"
    assert model_id_for_path(Path("/models/tiny-llama/")) == "tiny-llama"


def test_model_path_becomes_the_default(tmp_path: Path) -> None:
    catalog = Catalog("smollm2-135m", tmp_path / "mine.gguf")
    assert catalog.default_model == "mine"
    assert catalog.model_ids()[0] == "mine"
    assert "smollm2-135m" in catalog.model_ids()
    assert catalog.knows("mine") and catalog.knows("smollm2-135m") and not catalog.knows("other")
