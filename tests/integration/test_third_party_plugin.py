"""A real external plugin package: built into a wheel, installed, found through its entry point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exo_core.testing import find_free_ports

from .support import uv

FIXTURE = Path(__file__).parent.parent / "fixtures" / "exo-discovery-hello"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("hello-plugin")
    dist, target = work / "dist", work / "site"
    # build a real wheel from a copy, so the source tree stays clean
    src = work / "src"
    shutil.copytree(FIXTURE, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    subprocess.run(
        [uv(), "build", "--wheel", "--out-dir", str(dist), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("exo_discovery_hello-0.3.0-*.whl")
    subprocess.run(
        [uv(), "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "exo_discovery_hello-0.3.0.dist-info" / "entry_points.txt").exists()
    return target


def _env(plugin_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env["PYTHONPATH"] = str(plugin_dir)
    env["EXO_CONFIG_DIR"] = str(tmp_path / "config")
    env.update(extra)
    return env


def _exo(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exo_core.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_listed_by_exo_plugins(plugin_dir: Path, tmp_path: Path) -> None:
    out = _exo(["plugins"], _env(plugin_dir, tmp_path))
    assert out.returncode == 0, out.stderr
    entry = next(e for e in json.loads(out.stdout) if e["name"] == "hello")
    assert entry["distribution"] == "exo-discovery-hello"
    assert entry["version"] == "0.3.0"
    assert entry["components"] == {"discovery": ["hello"]}
    assert entry["hooks"] == ["exo_register_discovery"]


def test_its_flags_in_help(plugin_dir: Path, tmp_path: Path) -> None:
    out = _exo(["--help"], _env(plugin_dir, tmp_path, COLUMNS="300"))
    assert "--hello-greeting" in out.stdout and "EXO_DISCOVERY_HELLO_GREETING" in out.stdout
    assert "discovery 'hello' (exo-discovery-hello 0.3.0)" in out.stdout


def test_blocked_by_name(plugin_dir: Path, tmp_path: Path) -> None:
    out = _exo(["-p", "no:hello", "plugins"], _env(plugin_dir, tmp_path))
    assert "hello" not in {e["name"] for e in json.loads(out.stdout)}


@pytest.mark.timeout(90)
def test_selected_with_settings_from_its_env_var(plugin_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    node_port, api_port = find_free_ports(2)
    env = _env(
        plugin_dir,
        tmp_path,
        EXO_DISCOVERY_HELLO_GREETING="bonjour",
        EXO_DISCOVERY_HELLO_REPORT_FILE=str(report),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exo_core.cli",
            "--discovery-module",
            "hello",
            "--node-host",
            "127.0.0.1",
            "--node-port",
            str(node_port),
            "--chatgpt-api-host",
            "127.0.0.1",
            "--chatgpt-api-port",
            str(api_port),
            "--hello-peers",
            f"127.0.0.1:{find_free_ports(1)[0]}",
            "--node-id",
            "hello-node",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not report.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert report.exists(), f"node never started its discovery module (exit {proc.poll()})"
        got = json.loads(report.read_text())
        assert got["greeting"] == "bonjour"  # from EXO_DISCOVERY_HELLO_GREETING
        assert got["node_id"] == "hello-node"
        assert len(got["peers"]) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode in (0, 130), output
