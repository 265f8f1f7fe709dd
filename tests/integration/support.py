"""Helpers of the integration tests: talking to real ``exo`` processes on loopback."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exo_core.nodeproc import NodeProcess, direct_to, peers_file


def uv() -> str:
    """The uv binary (``$UV``, as ``make test`` sets it, else the one on PATH); fails the test without one."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.fail("uv is needed to build wheels here: run the tests with `make test`")
    return found


PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Why is the sky blue?",
    "Say hello in Spanish.",
    "What is 2 + 2?",
    "Name a famous painter.",
    "Describe a cat in one sentence.",
]

Start = Callable[..., NodeProcess]


def no_peers(tmp_path: Path, name: str) -> list[str]:
    return [
        "--discovery-module",
        "manual",
        "--discovery-config-path",
        str(peers_file(tmp_path / f"{name}.json", {})),
    ]


def greedy(node: NodeProcess, prompt: str, max_tokens: int = 20) -> list[str]:
    """The tokens of a greedy chat completion, as the API reports them in logprobs."""
    out = node.post(
        "/v1/chat/completions",
        {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "logprobs": True,
        },
    )
    return [t["token"] for t in out["choices"][0]["logprobs"]["content"]]


def stream(
    node: NodeProcess, prompt: str, max_tokens: int, on_chunk: Callable[[dict[str, Any]], None] | None = None
) -> tuple[str, dict[str, Any] | None]:
    """Stream a greedy chat completion; returns (text, error event or None)."""
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    text = ""
    for chunk in node.stream("/v1/chat/completions", body):
        if "error" in chunk:
            return text, chunk["error"]
        if on_chunk is not None:
            on_chunk(chunk)
        for choice in chunk.get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
    return text, None


def plan_nodes(node: NodeProcess) -> list[str]:
    plan = node.get("/v1/topology")["plan"]
    return [s["node_id"] for s in plan["shards"]]


def two_nodes(
    exo_node: Start, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[NodeProcess, NodeProcess]:
    """A remote node that knows nobody and a local node that dials it (direct discovery), joined."""
    remote = exo_node(*no_peers(tmp_path, "remote"), env=env)
    local = exo_node(*direct_to(remote), env=env)
    local.wait_for_nodes(2)
    return local, remote
