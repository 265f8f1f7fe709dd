"""The plugin registers ``udp`` with its settings; flags and env vars as documented."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
from exo_discovery_udp import plugin
from exo_discovery_udp.discovery import UdpDiscovery
from exo_discovery_udp.settings import UdpDiscoverySettings

from exo_core.cliflags import add_settings_flags
from exo_core.components import ComponentContext
from exo_core.plugins import Plugins
from exo_core.settings import CoreSettings, cli_flag_name, env_var_name


def test_registers_udp(exo_load_plugins: Callable[..., Plugins]) -> None:
    registry = exo_load_plugins(("discovery_udp", plugin), builtins=False).registry
    assert registry.get("discovery", "udp").settings is UdpDiscoverySettings


def test_flag_names_env_vars_and_descriptions() -> None:
    assert cli_flag_name(UdpDiscoverySettings, "broadcast_address") == "--broadcast-address"
    assert cli_flag_name(UdpDiscoverySettings, "discovery_interfaces") == "--discovery-interfaces"
    assert cli_flag_name(UdpDiscoverySettings, "discovery_port") == "--udp-discovery-port"
    assert env_var_name(UdpDiscoverySettings, "broadcast_address") == "EXO_DISCOVERY_UDP_BROADCAST_ADDRESS"
    assert UdpDiscoverySettings().discovery_port == 5678
    assert all(f.description for f in UdpDiscoverySettings.model_fields.values())
    taken: dict[str, str] = {}
    add_settings_flags(argparse.ArgumentParser(), CoreSettings, owner="core", taken=taken)
    add_settings_flags(argparse.ArgumentParser(), UdpDiscoverySettings, owner="udp", taken=taken)


def test_factory_builds_from_core_and_plugin_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXO_DISCOVERY_UDP_BROADCAST_ADDRESS", "127.255.255.255")
    core = CoreSettings(node_id="me", node_port=50099, cluster_key="s3cret", config_dir=tmp_path)
    settings = UdpDiscoverySettings(discovery_interfaces="lo", discovery_port=5999)
    node = plugin.build(ComponentContext(core, settings, "me"))  # built, not run: no traffic
    assert isinstance(node, UdpDiscovery)
    assert (node.node_id, node.node_port, node.port) == ("me", 50099, 5999)
    assert node.interfaces == ["lo"] and node.broadcast_addresses == ["127.255.255.255"]
    assert node.capabilities is not None and node.capabilities.memory > 0  # this device, from the core
    assert node.targets() == ["127.255.255.255"]
