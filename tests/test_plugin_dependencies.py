"""Plugins depend on ``exo-core`` only: code two plugins share belongs in the core (issue #15).

Each ``plugins/*/pyproject.toml`` is read as it is written, so a plugin cannot lean on another through its
runtime dependencies, its extras or a uv workspace source. Tests may still import several plugins: the dev
environment installs them all.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = sorted(ROOT.glob("plugins/*/pyproject.toml"))


def _name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement (``Foo_Bar[x]>=1; m`` -> ``foo-bar``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _plugin_names() -> set[str]:
    return {_name(tomllib.loads(p.read_text())["project"]["name"]) for p in PYPROJECTS}


def _declared(project: dict[str, Any]) -> list[str]:
    """Runtime requirements and every extra's requirements."""
    extras = project.get("optional-dependencies", {})
    return [*project.get("dependencies", []), *(r for reqs in extras.values() for r in reqs)]


def test_every_plugin_is_found() -> None:
    assert {p.parent.name for p in PYPROJECTS} >= {
        "discovery_manual",
        "discovery_udp",
        "discovery_tcp",
        "engine_numpy",
        "engine_mlx",
    }


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=lambda p: p.parent.name)
def test_no_plugin_depends_on_another_plugin(pyproject: Path) -> None:
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    others = _plugin_names() - {_name(project["name"])}
    declared = {_name(r) for r in _declared(project)}
    assert not declared & others, f"{project['name']} depends on plugin(s) {sorted(declared & others)}"
    assert "exo-core" in declared, f"{project['name']} does not declare exo-core"
    sources = {_name(s) for s in data.get("tool", {}).get("uv", {}).get("sources", {})}
    assert not sources & others, f"{project['name']} has uv sources for plugin(s) {sorted(sources & others)}"


def test_the_requirement_parser_normalizes_names() -> None:
    assert _name("Exo_Discovery.UDP[x]>=0.1,<0.2; python_version >= '3.11'") == "exo-discovery-udp"
    assert _name("mlx[cpu]>=0.30; sys_platform == 'linux'") == "mlx"
