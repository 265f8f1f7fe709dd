"""``benchmarks/decode_breakdown.py`` runs and its parts add up to the token's time (not a speed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "decode_breakdown.py"


def test_the_breakdown_adds_up() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "1", "--tokens", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["graph_calls"] == 61  # 30 blocks x (qkv, rest) + the head, per token
    parts = out["kernels_ms"] + out["calls_ms"] + out["attention_ms"] + out["glue_ms"]
    assert abs(parts - out["token_ms"]) < 0.01
    assert abs(out["qkv_ms"] + out["rest_ms"] + out["head_ms"] - out["graphs_ms"]) < 0.01
    assert min(out["kernels_ms"], out["attention_ms"], out["calls_ms"]) > 0
    # a difference of two timings: only its presence is checked here (4 tokens are noise)
    assert isinstance(out["offset_terms_ms"], float)
