from __future__ import annotations

import logging
import types
from importlib.metadata import EntryPoint

import pytest

from exo_core import plugins as plugins_module
from exo_core.components import RegisterComponent
from exo_core.errors import PluginError
from exo_core.hookspecs import hookimpl
from exo_core.plugins import load_plugins


def _module(name: str, **hooks: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in hooks.items():
        setattr(mod, key, value)
    return mod


def _discovery_plugin(component: str) -> types.ModuleType:
    @hookimpl
    def exo_register_discovery(register: RegisterComponent) -> None:
        register(component, lambda ctx: component)

    return _module(f"plugin_{component}", exo_register_discovery=exo_register_discovery)


class FakeEntryPoint:
    """Stands in for an installed distribution's entry point (pluggy's own tests do the same)."""

    def __init__(self, name: str, target: object) -> None:
        self.name = name
        self.value = f"fake.{name}"
        self._target = target
        self.dist = types.SimpleNamespace(name=f"exo-fake-{name}", version="9.9")

    def load(self) -> object:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    installed: dict[str, object] = {}
    monkeypatch.setattr(
        plugins_module,
        "entry_points",
        lambda group: (
            [FakeEntryPoint(n, t) for n, t in installed.items()] if group == "exo_core.plugins" else []
        ),
    )
    return installed


def test_builtins_register_first() -> None:
    plugins = load_plugins(env={})
    names = [name for name, _ in plugins.manager.list_name_plugin()]
    assert names[:2] == ["tcp_transport", "ring_partitioner"]
    assert plugins.registry.names("transport")[0] == "tcp"
    assert "ring-memory-weighted" in plugins.registry.names("partitioner")


def test_installed_first_party_plugins_are_found() -> None:
    plugins = load_plugins(env={})
    loaded = {name for name, _ in plugins.manager.list_name_plugin()}
    assert {"discovery_manual", "discovery_udp", "discovery_tcp", "engine_numpy", "engine_mlx"} <= loaded
    assert plugins.info["discovery_udp"].distribution == "exo-discovery-udp"


def test_entry_points_loaded_with_distribution(fake_entry_points: dict[str, object]) -> None:
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    plugins = load_plugins(env={})
    assert plugins.registry.get("discovery", "alpha").plugin == "alpha"
    entry = next(e for e in plugins.describe() if e["name"] == "alpha")
    assert entry == {
        "name": "alpha",
        "distribution": "exo-fake-alpha",
        "version": "9.9",
        "builtin": False,
        "hooks": ["exo_register_discovery"],
        "components": {"discovery": ["alpha"]},
    }


def test_blocked_names(fake_entry_points: dict[str, object]) -> None:
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    fake_entry_points["beta"] = _discovery_plugin("beta")
    plugins = load_plugins(disabled=["alpha"], env={"EXO_DISABLED_PLUGINS": "tcp_transport"})
    assert plugins.registry.names("discovery") == ["beta"]
    assert plugins.registry.names("transport") == []
    assert plugins.manager.is_blocked("alpha")


def test_only_listed_plugins(fake_entry_points: dict[str, object]) -> None:
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    fake_entry_points["beta"] = _discovery_plugin("beta")
    plugins = load_plugins(env={"EXO_PLUGINS": "beta"})
    assert plugins.registry.names("discovery") == ["beta"]
    with pytest.raises(PluginError, match="not installed: gamma"):
        load_plugins(env={"EXO_PLUGINS": "beta,gamma"})


def test_import_failure_skipped_with_warning(
    fake_entry_points: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    fake_entry_points["broken"] = ImportError("No module named 'missing_lib'")
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    with caplog.at_level(logging.WARNING):
        plugins = load_plugins(env={})
    assert "skipping plugin broken" in caplog.text
    assert plugins.registry.names("discovery") == ["alpha"]
    assert "missing_lib" in plugins.registry.failed_plugins["broken"]
    with pytest.raises(PluginError, match=r"broken .* failed to import"):
        load_plugins(env={"EXO_PLUGINS": "broken"})


def test_duplicate_component_across_plugins(fake_entry_points: dict[str, object]) -> None:
    fake_entry_points["one"] = _discovery_plugin("same")
    fake_entry_points["two"] = _discovery_plugin("same")
    with pytest.raises(PluginError, match="by plugin one and by plugin two"):
        load_plugins(env={})


def test_misspelled_hook_fails_loudly(fake_entry_points: dict[str, object]) -> None:
    @hookimpl
    def exo_register_discovry(register: RegisterComponent) -> None:  # typo on purpose
        pass

    fake_entry_points["typo"] = _module("typo", exo_register_discovry=exo_register_discovry)
    with pytest.raises(Exception, match="exo_register_discovry"):
        load_plugins(env={})


def test_hook_exception_names_plugin(fake_entry_points: dict[str, object]) -> None:
    @hookimpl
    def exo_register_engine(register: RegisterComponent) -> None:
        raise RuntimeError("kaboom")

    fake_entry_points["bad"] = _module("bad", exo_register_engine=exo_register_engine)
    with pytest.raises(
        PluginError, match=r"plugin bad failed in exo_register_engine: RuntimeError\('kaboom'\)"
    ):
        load_plugins(env={})


def test_real_entry_point_objects_load() -> None:
    ep = EntryPoint(name="x", value="exo_core.transport.plugin", group="exo_core.plugins")
    assert hasattr(ep.load(), "exo_register_transport")
