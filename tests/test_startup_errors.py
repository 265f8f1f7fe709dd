"""A failed start is one line: ``exo: error: <what, where, how to fix>`` on stderr, nothing else, exit code 2.

Each case starts a real ``exo`` process (on loopback; the discovery modules involved fail before they send
anything). The node's own start-up log lines are held until it is up (exo_core/startup_log.py), so they do
not bury the error; at ``--log-level DEBUG`` they are shown as they happen.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXO = [sys.executable, "-m", "exo_core.cli"]
LOOPBACK = [
    "--node-host",
    "127.0.0.1",
    "--node-port",
    "0",
    "--chatgpt-api-host",
    "127.0.0.1",
    "--chatgpt-api-port",
    "0",
]


def _peers(tmp: Path, content: object) -> str:
    path = tmp / "peers.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _manual(tmp: Path, content: object) -> list[str]:
    return ["--discovery-module", "manual", "--discovery-config-path", _peers(tmp, content)]


CASES: dict[str, Callable[[Path], tuple[list[str], dict[str, str], list[str]]]] = {
    # name -> (args, env, words the one line must contain)
    "peers file missing": lambda t: (
        ["--discovery-module", "manual", "--discovery-config-path", str(t / "nope.json")],
        {},
        ["nope.json", "not found", "--discovery-config-path"],
    ),
    "peers file bad JSON": lambda t: (_manual(t, "{bad"), {}, ["peers.json", "invalid JSON at line 1"]),
    "peers entry without a port": lambda t: (
        _manual(t, {"peers": {"b": {"address": "127.0.0.1"}}}),
        {},
        ["peers.json", "peers.b.port", "missing"],
    ),
    "misspelled interface": lambda t: (
        [
            "--discovery-module",
            "udp",
            "--discovery-interfaces",
            "nosuch0",
            "--broadcast-address",
            "127.255.255.255",
        ],
        {},
        ["--discovery-interfaces", "nosuch0"],
    ),
    "bad env value of a plugin setting": lambda t: (
        _manual(t, {"peers": {}}),
        {"EXO_DISCOVERY_MANUAL_CONFIG_POLL_INTERVAL": "often"},
        ["EXO_DISCOVERY_MANUAL_CONFIG_POLL_INTERVAL", "often"],
    ),
    "blocked plugin": lambda t: (
        ["-p", "no:discovery_manual", "--discovery-module", "manual"],
        {},
        ["exo-discovery-manual is installed", "-p no:discovery_manual", "blocked"],
    ),
    "API keys file with a bad line": lambda t: (
        [*_manual(t, {"peers": {}}), "--api-keys-file", _write(t / "keys", "alice sk-1\nbob\n")],
        {},
        ["--api-keys-file", "line 2", "expected 'name key'"],
    ),
    "direct discovery without a peer": lambda t: (
        ["--discovery-module", "direct"],
        {},
        ["--peer-host", "EXO_DISCOVERY_DIRECT_PEER_HOST"],
    ),
}


def _run(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    full.update({"EXO_CONFIG_DIR": str(tmp / "config"), **env})
    return subprocess.run([*EXO, *args], capture_output=True, text=True, env=full, timeout=60, check=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failed_start_is_one_line(case: str, tmp_path: Path) -> None:
    args, env, words = CASES[case](tmp_path)
    proc = _run([*args, *LOOPBACK], env, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("exo: error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_busy_ports_are_one_line_too(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for flag in ("--node-port", "--chatgpt-api-port"):
            args = [*_manual(tmp_path, {"peers": {}}), *LOOPBACK, flag, port]
            proc = _run(args, {}, tmp_path)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, proc.stderr
            assert lines[0].startswith("exo: error: ") and flag in lines[0] and port in lines[0], lines


def test_debug_shows_the_start_up_lines_before_the_error(tmp_path: Path) -> None:
    args = [*_manual(tmp_path, "{bad"), *LOOPBACK, "--log-level", "DEBUG"]
    proc = _run(args, {}, tmp_path)
    assert proc.returncode == 2
    assert "transport listening on 127.0.0.1" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("exo: error: ")
