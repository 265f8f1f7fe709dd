"""The plugin registers ``tcp`` with its settings; flags and env vars as documented."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
from exo_discovery_manual.settings import DirectDiscoverySettings, ManualDiscoverySettings
from exo_discovery_tcp import plugin
from exo_discovery_tcp.discovery import TcpDiscovery
from exo_discovery_tcp.settings import TcpDiscoverySettings
from exo_discovery_udp.settings import UdpDiscoverySettings

from exo_core.cliflags import add_settings_flags
from exo_core.components import ComponentContext
from exo_core.plugins import Plugins
from exo_core.settings import CoreSettings, cli_flag_name, env_var_name


def test_registers_tcp(exo_load_plugins: Callable[..., Plugins]) -> None:
    registry = exo_load_plugins(("discovery_tcp", plugin), builtins=False).registry
    assert registry.get("discovery", "tcp").settings is TcpDiscoverySettings


def test_flag_names_are_unique_across_all_discovery_plugins() -> None:
    assert cli_flag_name(TcpDiscoverySettings, "discovery_targets") == "--discovery-targets"
    assert env_var_name(TcpDiscoverySettings, "discovery_targets") == "EXO_DISCOVERY_TCP_DISCOVERY_TARGETS"
    assert TcpDiscoverySettings().discovery_port == 5678
    assert all(f.description for f in TcpDiscoverySettings.model_fields.values())
    taken: dict[str, str] = {}
    parser = argparse.ArgumentParser()
    for model in (
        CoreSettings,
        ManualDiscoverySettings,
        DirectDiscoverySettings,
        UdpDiscoverySettings,
        TcpDiscoverySettings,
    ):
        add_settings_flags(parser, model, owner=model.__name__, taken=taken)  # raises on a clash
    assert "--tcp-scan-local-subnets" in taken


def test_factory_builds_from_core_and_plugin_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXO_DISCOVERY_TCP_DISCOVERY_TARGETS", "127.0.0.1, 127.0.0.2:6000, 127.0.0.8/30")
    core = CoreSettings(node_id="me", node_port=50098, config_dir=tmp_path)
    node = plugin.build(ComponentContext(core, TcpDiscoverySettings(scan_local_subnets=False), "me"))
    assert isinstance(node, TcpDiscovery)  # built, not run: no traffic
    assert (node.node_id, node.node_port, node.port) == ("me", 50098, 5678)
    assert node.targets.endpoints == (("127.0.0.1", 5678), ("127.0.0.2", 6000))
    assert node.targets.ranges == (("127.0.0.9", 5678), ("127.0.0.10", 5678))
    assert node.capabilities is not None and not node.scan_local_subnets
