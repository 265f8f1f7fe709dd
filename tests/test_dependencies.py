"""The core and the discovery plugins stay light: no gRPC, protobuf, zeroconf or onnxruntime, neither among
what they declare nor among what they import. Only exo-engine-numpy brings onnxruntime (and its protobuf)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import requires

LIGHT = ["exo-core", "exo-discovery-manual", "exo-discovery-udp", "exo-discovery-tcp"]
HEAVY = ("grpc", "grpcio", "protobuf", "zeroconf", "onnx", "onnxruntime")


def _closure(dist: str, seen: set[str] | None = None) -> set[str]:
    """``dist`` and every distribution it requires, recursively (extras excluded)."""
    seen = set() if seen is None else seen
    name = dist.lower().replace("_", "-")
    if name in seen:
        return seen
    seen.add(name)
    for req in requires(dist) or []:
        if "extra ==" in req:
            continue
        match = re.match(r"[A-Za-z0-9_.\-]+", req)
        if match:
            try:
                _closure(match.group(0), seen)
            except Exception:  # not installed on this platform (a marker excluded it)
                continue
    return seen


def test_light_distributions_do_not_depend_on_heavy_ones() -> None:
    for dist in LIGHT:
        closure = _closure(dist)
        assert not closure & set(HEAVY), (dist, sorted(closure & set(HEAVY)))


def test_the_numpy_engine_brings_onnxruntime() -> None:
    assert "onnxruntime" in _closure("exo-engine-numpy")


def test_importing_the_core_and_discovery_loads_no_heavy_module() -> None:
    code = (
        "import json, sys\n"
        "import exo_core.cli, exo_core.plugins, exo_core.orchestration.node\n"
        "import exo_discovery_manual.plugin, exo_discovery_udp.plugin, exo_discovery_tcp.plugin\n"
        "import exo_engine_numpy.plugin\n"  # registering the engine imports nothing heavy either
        "from exo_core.plugins import load_plugins\n"
        "load_plugins()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = json.loads(out.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in {"grpc", "zeroconf", "onnx", "onnxruntime"}]
    heavy += [m for m in loaded if m.startswith("google.protobuf")]
    assert heavy == []
