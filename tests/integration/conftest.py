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
