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


def test_concurrent_forwards_follow_blas_threads() -> None:
    from exo_core.orchestration.stages import concurrent_forwards

    assert concurrent_forwards({}, cores=2) == 1  # BLAS uses every core already
    assert concurrent_forwards({"OPENBLAS_NUM_THREADS": "1"}, cores=2) == 2
    assert concurrent_forwards({"OMP_NUM_THREADS": "2"}, cores=8) == 4
    assert concurrent_forwards({"OPENBLAS_NUM_THREADS": "4"}, cores=2) == 1
    assert concurrent_forwards({"OPENBLAS_NUM_THREADS": "x"}, cores=2) == 1
