"""``exo run``: one completion from the command line, through the same path as the API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exo_core.nodeproc import peers_file

pytestmark = pytest.mark.timeout(180)


def exo_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    empty = peers_file(tmp_path / "empty.json", {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env["EXO_CONFIG_DIR"] = str(tmp_path / "config")
    cmd = [
        sys.executable,
        "-m",
        "exo_core.cli",
        "run",
        "smollm2-135m",
        "--discovery-module",
        "manual",
        "--discovery-config-path",
        str(empty),
        "--node-host",
        "127.0.0.1",
        "--node-port",
        "0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=170, check=False)


def test_raw_completion(tmp_path: Path) -> None:
    out = exo_run(tmp_path, "--raw", "--prompt", "The capital of France is", "--max-tokens", "20")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_chat_reply(tmp_path: Path) -> None:
    out = exo_run(tmp_path, "--prompt", "Tell me the capital of France.", "--max-tokens", "20")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_unknown_model_fails_clearly(tmp_path: Path) -> None:
    empty = peers_file(tmp_path / "empty.json", {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env["EXO_CONFIG_DIR"] = str(tmp_path / "config")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "exo_core.cli",
            "run",
            "no-such-model",
            "--discovery-module",
            "manual",
            "--discovery-config-path",
            str(empty),
            "--node-host",
            "127.0.0.1",
            "--node-port",
            "0",
            "--prompt",
            "hi",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1
    assert "model 'no-such-model' is not known here" in out.stderr
