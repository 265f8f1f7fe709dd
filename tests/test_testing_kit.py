from __future__ import annotations

import socket
import types
from collections.abc import Callable
from pathlib import Path

import pluggy

from exo_core.components import RegisterComponent
from exo_core.hookspecs import hookimpl
from exo_core.plugins import Plugins
from exo_core.settings import CoreSettings


def test_plugin_manager_is_fresh(exo_plugin_manager: pluggy.PluginManager) -> None:
    assert exo_plugin_manager.get_plugins() == set()
    assert hasattr(exo_plugin_manager.hook, "exo_register_engine")


def test_load_plugins_isolated(exo_load_plugins: Callable[..., Plugins]) -> None:
    @hookimpl
    def exo_register_partitioner(register: RegisterComponent) -> None:
        register("mine", lambda ctx: "p")

    mod = types.ModuleType("mine")
    mod.exo_register_partitioner = exo_register_partitioner  # type: ignore[attr-defined]
    plugins = exo_load_plugins(("mine", mod), builtins=False)
    assert plugins.registry.names("partitioner") == ["mine"]
    assert plugins.registry.names("discovery") == []  # no installed entry points leak in


def test_free_ports_are_bindable(free_port: int, free_ports: Callable[[int], list[int]]) -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in [free_port, *ports]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_config_dir_isolates_node_id(exo_config_dir: Path) -> None:
    first = CoreSettings().resolve_node_id()
    assert (exo_config_dir / "node_id").read_text().strip() == first
    assert CoreSettings().resolve_node_id() == first


def test_load_plugins_builtins_and_entry_points_on_request(exo_load_plugins: Callable[..., Plugins]) -> None:
    plugins = exo_load_plugins()
    assert plugins.registry.names("transport") == ["tcp"]
    assert plugins.registry.names("discovery") == []
    with_installed = exo_load_plugins(entry_points=True)
    assert {"manual", "direct", "udp", "tcp"} <= set(with_installed.registry.names("discovery"))
    assert exo_load_plugins(builtins=False).registry.names("transport") == []
