"""Issue #14's acceptance 2 in CI: 20 kills at random token positions over 2- and 3-node rings of real
``exo`` processes, 0 tokens lost and 0 repeated. It runs ``benchmarks/failover.py`` (which explains how lost
and repeated tokens are told apart from a different continuation) with short streams, and fails on its exit
code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "failover.py"


def test_twenty_random_kills_lose_and_repeat_no_token() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "20", "--tokens", "40", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["runs"] == 20 and sorted(result["rings"]) == [2, 3]
    assert result["tokens_lost"] == 0 and result["tokens_duplicated"] == 0, result["every_run"]
    assert result["errors"] == 0, result["every_run"]
    assert proc.returncode == 0, proc.stderr[-3000:]
