"""The plugin registers ``manual`` and ``direct`` with their settings; flags and env vars as documented."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
from exo_discovery_manual import plugin
from exo_discovery_manual.direct import DirectDiscovery
from exo_discovery_manual.manual import ManualDiscovery
from exo_discovery_manual.settings import DirectDiscoverySettings, ManualDiscoverySettings
from pydantic_settings import BaseSettings

from exo_core.cliflags import add_settings_flags
from exo_core.components import ComponentContext
from exo_core.errors import ConfigError
from exo_core.plugins import Plugins
from exo_core.settings import CoreSettings, cli_flag_name, env_var_name


def test_registers_both_components(exo_load_plugins: Callable[..., Plugins]) -> None:
    registry = exo_load_plugins(("discovery_manual", plugin), builtins=False).registry
    assert registry.get("discovery", "manual").settings is ManualDiscoverySettings
    assert registry.get("discovery", "direct").settings is DirectDiscoverySettings


def test_seed_flag_names_env_vars_and_descriptions() -> None:
    assert cli_flag_name(ManualDiscoverySettings, "config_path") == "--discovery-config-path"
    assert env_var_name(ManualDiscoverySettings, "config_path") == "EXO_DISCOVERY_MANUAL_CONFIG_PATH"
    assert cli_flag_name(DirectDiscoverySettings, "peer_host") == "--peer-host"
    assert cli_flag_name(DirectDiscoverySettings, "peer_port") == "--peer-port"
    assert env_var_name(DirectDiscoverySettings, "peer_port") == "EXO_DISCOVERY_DIRECT_PEER_PORT"
    for model in (ManualDiscoverySettings, DirectDiscoverySettings):
        assert all(f.description for f in model.model_fields.values())
    taken: dict[str, str] = {}
    parser = argparse.ArgumentParser()
    models: tuple[tuple[str, type[BaseSettings]], ...] = (
        ("core", CoreSettings),
        ("manual", ManualDiscoverySettings),
        ("direct", DirectDiscoverySettings),
    )
    for owner, settings_cls in models:
        add_settings_flags(parser, settings_cls, owner=owner, taken=taken)  # raises on a clash


def test_factories_read_settings_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    core = CoreSettings(node_id="me", config_dir=tmp_path)
    monkeypatch.setenv("EXO_DISCOVERY_MANUAL_CONFIG_PATH", str(tmp_path / "peers.json"))
    manual = plugin.build_manual(ComponentContext(core, ManualDiscoverySettings(), "me"))
    assert isinstance(manual, ManualDiscovery) and manual.config_path == tmp_path / "peers.json"
    assert manual.node_id == "me"

    monkeypatch.setenv("EXO_DISCOVERY_DIRECT_PEER_HOST", "10.1.2.3")
    direct = plugin.build_direct(ComponentContext(core, DirectDiscoverySettings(peer_port=50052), "me"))
    assert isinstance(direct, DirectDiscovery) and direct.peer.address == "10.1.2.3:50052"


def test_factories_explain_missing_flags(tmp_path: Path) -> None:
    core = CoreSettings(node_id="me", config_dir=tmp_path)
    with pytest.raises(
        ConfigError, match=r"manual needs --discovery-config-path \(EXO_DISCOVERY_MANUAL_CONFIG_PATH\)"
    ):
        plugin.build_manual(ComponentContext(core, ManualDiscoverySettings(), "me"))
    with pytest.raises(ConfigError, match=r"direct needs --peer-host .* and --peer-port"):
        plugin.build_direct(ComponentContext(core, DirectDiscoverySettings(), "me"))
