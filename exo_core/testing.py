"""Opt-in pytest plugin with fixtures for exo and for third-party plugin authors.

Enable it with ``-p exo_core.testing`` on the pytest command line, or ``pytest_plugins =
["exo_core.testing"]`` in a ``conftest.py``. Fixtures:

``exo_plugin_manager``
    A fresh :class:`pluggy.PluginManager` that knows exo's hook specs and has no plugin registered.
``exo_load_plugins``
    A function ``(*plugins, builtins=True, entry_points=False) -> Plugins`` that registers the given
    ``(name, module)`` pairs (plus the built-ins, plus installed entry points if asked) and returns the
    filled component registry: the quickest way to check a plugin registers what it should.
``free_port`` / ``free_ports``
    A free TCP port on 127.0.0.1, or a function ``(n) -> list[int]`` of distinct free ports.
``exo_node``
    A factory ``(*args, env=None, node_id=None) -> NodeProcess`` starting a real ``exo`` node in a
    subprocess on free loopback ports (pass the discovery flags in ``args``); every node is stopped at
    the end of the test. ``NodeProcess.get/post`` talk to its API.
``exo_config_dir``
    A temporary config dir, exported as ``EXO_CONFIG_DIR`` so nodes started by the test get their own
    persistent node id and never touch the user's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from exo_core.nodeproc import NodeProcess, find_free_ports
from exo_core.plugins import BUILTIN_PLUGINS, Plugins, load_plugins, make_manager
from exo_core.transport.memory import MemoryNetwork, MemoryTransport

__all__ = ["MemoryNetwork", "MemoryTransport", "NodeProcess", "find_free_ports"]


@pytest.fixture
def exo_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with exo's hook specs and no plugins."""
    return make_manager()


@pytest.fixture
def exo_load_plugins() -> Callable[..., Plugins]:
    """Load given plugins (name, module) into a fresh manager and return the filled registry."""

    def load(*plugins: tuple[str, Any], builtins: bool = True, entry_points: bool = False) -> Plugins:
        return load_plugins(
            env={},
            extra=plugins,
            builtins=BUILTIN_PLUGINS if builtins else {},
            entry_points=None if entry_points else (),
        )

    return load


@pytest.fixture
def free_port() -> int:
    """One free TCP port on 127.0.0.1."""
    return find_free_ports(1)[0]


@pytest.fixture
def free_ports() -> Callable[[int], list[int]]:
    """A function returning ``n`` distinct free TCP ports on 127.0.0.1."""
    return find_free_ports


@pytest.fixture
def exo_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary config dir, exported as ``EXO_CONFIG_DIR``."""
    path = tmp_path / "exo-config"
    path.mkdir()
    monkeypatch.setenv("EXO_CONFIG_DIR", str(path))
    yield path


@pytest.fixture
def exo_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start real ``exo`` nodes in subprocesses (in a network namespace with ``netns=``); all are stopped at
    teardown."""
    started: list[NodeProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        node_id: str | None = None,
        timeout: float = 60.0,
        netns: str | None = None,
    ) -> NodeProcess:
        node = NodeProcess(
            tmp_path / f"node{len(started)}", args=args, env=env or {}, node_id=node_id, netns=netns
        )
        started.append(node)
        return node.start(timeout=timeout)

    yield start
    for node in started:
        node.stop()
