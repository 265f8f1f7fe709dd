"""A ring of a NumPy node and an MLX node (separate processes) serving one model together."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from exo_core.nodeproc import NodeProcess, direct_to

from .support import PROMPTS, greedy, no_peers, plan_nodes

pytestmark = pytest.mark.timeout(300)


@pytest.mark.skipif(importlib.util.find_spec("mlx") is None, reason="mlx is not installed on this platform")
def test_numpy_and_mlx_nodes_in_one_ring(
    exo_node: Callable[..., NodeProcess],
    tmp_path: Path,
    reference_float32: dict[str, list[str]],
    record_property: Callable[[str, object], None],
) -> None:
    """The NumPy node on its float32 path, the MLX node dense on the CPU: both compute in float32 from the
    same weights, so the ring reproduces a float32 single node. (The quantized NumPy path rounds
    activations to 8 bits, MLX's quantized one does not: a ring mixing them is tested in
    test_quantized_numpy_and_mlx_nodes_answer.)"""
    reference = reference_float32
    mlx_node = exo_node(*no_peers(tmp_path, "mlx"), "--inference-engine", "mlx")
    numpy_node = exo_node(*direct_to(mlx_node), "--inference-engine", "numpy", "--numpy-weights", "float32")
    topo = numpy_node.wait_for_nodes(2)
    assert {n["engine"] for n in topo["nodes"]} == {"numpy", "mlx"}
    prompt = max(PROMPTS, key=lambda p: len(reference[p]))  # the longest answer shows the most
    tokens = greedy(numpy_node, prompt)
    assert sorted(plan_nodes(numpy_node)) == sorted([numpy_node.node_id, mlx_node.node_id])
    expected = reference[prompt]
    assert len(expected) >= 8
    same = next((i for i, (a, b) in enumerate(zip(tokens, expected, strict=False)) if a != b), len(expected))
    record_property("tokens_equal_to_numpy_single_node", same)
    # both engines compute in float32 from the same weights: they may part only at a near-tie
    assert tokens[:8] == expected[:8]


@pytest.mark.skipif(importlib.util.find_spec("mlx") is None, reason="mlx is not installed on this platform")
def test_quantized_numpy_and_mlx_nodes_answer(
    exo_node: Callable[..., NodeProcess], tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    """The default NumPy node (quantized weights) and an MLX node in one ring: the hidden states they pass
    are float32 whatever each holds, and the answer starts as the quantized single node's."""
    mlx_node = exo_node(*no_peers(tmp_path, "mlx"), "--inference-engine", "mlx")
    numpy_node = exo_node(*direct_to(mlx_node), "--inference-engine", "numpy")
    numpy_node.wait_for_nodes(2)
    prompt = PROMPTS[0]
    tokens = greedy(numpy_node, prompt)
    assert sorted(plan_nodes(numpy_node)) == sorted([numpy_node.node_id, mlx_node.node_id])
    assert len(tokens) >= 4 and tokens[:2] == reference[prompt][:2]
