"""The plugin example of docs/plugins.md works as printed: its files, taken from the page, build into a
wheel that installs beside exo and shows up in ``exo plugins`` with its component and its flag."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .support import uv

ROOT = Path(__file__).resolve().parents[2]
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<body>.*?)\n```", re.S)

pytestmark = pytest.mark.timeout(300)


def test_the_documented_plugin_builds_installs_and_loads(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    files = {m["path"]: m["body"] + "\n" for m in FILE_BLOCK.finditer(page)}
    assert set(files) == {"pyproject.toml", "exo_discovery_hello/__init__.py"}, sorted(files)
    src = tmp_path / "exo-discovery-hello"
    for rel, body in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(body, encoding="utf-8")
    dist, site = tmp_path / "dist", tmp_path / "site"

    def run(cmd: list[str]) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{cmd[:2]}: {done.stdout}\n{done.stderr}"

    run([uv(), "build", "--wheel", "-q", "--out-dir", str(dist), str(src)])
    (wheel,) = dist.glob("exo_discovery_hello-0.1.0-*.whl")
    run([uv(), "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env.update({"PYTHONPATH": str(site), "EXO_CONFIG_DIR": str(tmp_path / "config")})
    out = subprocess.run(
        [sys.executable, "-m", "exo_core.cli", "plugins"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    entry = next(e for e in json.loads(out.stdout) if e["name"] == "hello")
    assert entry["distribution"] == "exo-discovery-hello" and entry["components"] == {"discovery": ["hello"]}
    helptext = subprocess.run(
        [sys.executable, "-m", "exo_core.cli", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert "--hello-peers" in helptext.stdout and "EXO_DISCOVERY_HELLO_PEERS" in helptext.stdout
