"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exo_core.nodeproc import NodeProcess

from .support import PROMPTS, greedy, no_peers


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[str]]]:
    """Greedy answers of one node alone: the ground truth for every cluster test."""
    tmp = tmp_path_factory.mktemp("single")
    node = NodeProcess(tmp / "solo", args=no_peers(tmp, "solo")).start()
    try:
        yield {p: greedy(node, p) for p in PROMPTS}
    finally:
        node.stop()


@pytest.fixture(scope="session")
def reference_float32(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[str]]]:
    """Greedy answers of one node alone on the NumPy engine's exact float32 path (``--numpy-weights
    float32``): what a ring of float32 engines (NumPy float32, MLX dense) must reproduce."""
    tmp = tmp_path_factory.mktemp("single-f32")
    node = NodeProcess(
        tmp / "solo", args=no_peers(tmp, "solo"), env={"EXO_ENGINE_NUMPY_WEIGHTS": "float32"}
    ).start()
    try:
        yield {p: greedy(node, p) for p in PROMPTS}
    finally:
        node.stop()
