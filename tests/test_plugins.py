from __future__ import annotations

import logging
import types
from collections.abc import Generator
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from exo_core.components import RegisterComponent
from exo_core.engine_select import auto_engine
from exo_core.errors import PluginError
from exo_core.hookspecs import hookimpl
from exo_core.plugins import Plugins, load_plugins


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


class FakeInstalled:
    """Entry points to hand to :func:`load_plugins` instead of the installed ones (name -> plugin or the
    exception its import raises)."""

    def __init__(self) -> None:
        self.plugins: dict[str, object] = {}

    def __setitem__(self, name: str, target: object) -> None:
        self.plugins[name] = target

    def load(self, **kwargs: Any) -> Plugins:
        eps = [FakeEntryPoint(n, t) for n, t in self.plugins.items()]
        return load_plugins(entry_points=eps, **kwargs)


@pytest.fixture
def fake_entry_points() -> FakeInstalled:
    return FakeInstalled()


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


def test_entry_points_loaded_with_distribution(fake_entry_points: FakeInstalled) -> None:
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    plugins = fake_entry_points.load(env={})
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


def test_blocked_names(fake_entry_points: FakeInstalled) -> None:
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    fake_entry_points["beta"] = _discovery_plugin("beta")
    plugins = fake_entry_points.load(disabled=["alpha"], env={"EXO_DISABLED_PLUGINS": "tcp_transport"})
    assert plugins.registry.names("discovery") == ["beta"]
    assert plugins.registry.names("transport") == []
    assert plugins.manager.is_blocked("alpha")


def test_only_listed_plugins(fake_entry_points: FakeInstalled) -> None:
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    fake_entry_points["beta"] = _discovery_plugin("beta")
    plugins = fake_entry_points.load(env={"EXO_PLUGINS": "beta"})
    assert plugins.registry.names("discovery") == ["beta"]
    with pytest.raises(PluginError, match="not installed: gamma"):
        fake_entry_points.load(env={"EXO_PLUGINS": "beta,gamma"})


def test_import_failure_skipped_with_warning(
    fake_entry_points: FakeInstalled, caplog: pytest.LogCaptureFixture
) -> None:
    fake_entry_points["broken"] = ImportError("No module named 'missing_lib'")
    fake_entry_points["alpha"] = _discovery_plugin("alpha")
    with caplog.at_level(logging.WARNING):
        plugins = fake_entry_points.load(env={})
    assert "skipping plugin broken" in caplog.text
    assert plugins.registry.names("discovery") == ["alpha"]
    assert "missing_lib" in plugins.registry.failed_plugins["broken"]
    with pytest.raises(PluginError, match=r"broken .* failed to import"):
        fake_entry_points.load(env={"EXO_PLUGINS": "broken"})


def test_duplicate_component_across_plugins(fake_entry_points: FakeInstalled) -> None:
    fake_entry_points["one"] = _discovery_plugin("same")
    fake_entry_points["two"] = _discovery_plugin("same")
    with pytest.raises(PluginError, match="by plugin one and by plugin two"):
        fake_entry_points.load(env={})


def test_misspelled_hook_fails_loudly(fake_entry_points: FakeInstalled) -> None:
    @hookimpl
    def exo_register_discovry(register: RegisterComponent) -> None:  # typo on purpose
        pass

    fake_entry_points["typo"] = _module("typo", exo_register_discovry=exo_register_discovry)
    with pytest.raises(Exception, match="exo_register_discovry"):
        fake_entry_points.load(env={})


def test_hook_exception_names_plugin(fake_entry_points: FakeInstalled) -> None:
    @hookimpl
    def exo_register_engine(register: RegisterComponent) -> None:
        raise RuntimeError("kaboom")

    fake_entry_points["bad"] = _module("bad", exo_register_engine=exo_register_engine)
    with pytest.raises(
        PluginError, match=r"plugin bad failed in exo_register_engine: RuntimeError\('kaboom'\)"
    ):
        fake_entry_points.load(env={})


def test_real_entry_point_objects_load() -> None:
    ep = EntryPoint(name="x", value="exo_core.transport.plugin", group="exo_core.plugins")
    assert hasattr(ep.load(), "exo_register_transport")


def _engine_plugin(name: str, calls: list[str], **marks: bool) -> types.ModuleType:
    @hookimpl(**marks)
    def exo_register_engine(register: RegisterComponent) -> None:
        calls.append(name)
        register(name, lambda ctx: name)

    return _module(f"plugin_{name}", exo_register_engine=exo_register_engine)


def test_builtins_and_entry_points_are_parameters() -> None:
    calls: list[str] = []
    eps = [FakeEntryPoint("alpha", _engine_plugin("alpha", calls))]
    plugins = load_plugins(
        env={}, builtins={"ring_partitioner": "exo_core.topology.plugin"}, entry_points=eps
    )
    assert [name for name, _ in plugins.manager.list_name_plugin()] == ["ring_partitioner", "alpha"]
    assert plugins.manager.get_plugin("alpha").plugin is eps[0].load()
    assert plugins.registry.names("transport") == []
    assert plugins.registry.names("engine") == ["alpha"]
    assert load_plugins(env={}, builtins={}, entry_points=()).describe() == []


def test_components_listed_in_registration_order(fake_entry_points: FakeInstalled) -> None:
    calls: list[str] = []
    for name in ("zeta", "alpha", "mid"):
        fake_entry_points[name] = _engine_plugin(name, calls)
    plugins = fake_entry_points.load(env={})
    assert plugins.registry.names("engine") == ["alpha", "mid", "zeta"]  # sorted entry points, as registered
    assert calls == ["zeta", "mid", "alpha"]  # pluggy runs the last registered first
    assert auto_engine(plugins.registry).name == "alpha"


def test_tryfirst_implementation_registers_first_and_wins(fake_entry_points: FakeInstalled) -> None:
    calls: list[str] = []
    fake_entry_points["alpha"] = _engine_plugin("alpha", calls, trylast=True)
    fake_entry_points["mid"] = _engine_plugin("mid", calls)
    fake_entry_points["zeta"] = _engine_plugin("zeta", calls, tryfirst=True)
    plugins = fake_entry_points.load(env={})
    assert calls == ["zeta", "mid", "alpha"]
    assert plugins.registry.names("engine") == ["zeta", "mid", "alpha"]
    assert auto_engine(plugins.registry).name == "zeta"  # `--inference-engine auto` takes the first one
    assert plugins.registry.get("engine", "zeta").plugin == "zeta"


def test_tryfirst_plugin_is_named_first_in_a_duplicate_error(fake_entry_points: FakeInstalled) -> None:
    fake_entry_points["one"] = _discovery_plugin("same")

    @hookimpl(tryfirst=True)
    def exo_register_discovery(register: RegisterComponent) -> None:
        register("same", lambda ctx: "two")

    fake_entry_points["two"] = _module("two", exo_register_discovery=exo_register_discovery)
    with pytest.raises(PluginError, match="by plugin two and by plugin one"):
        fake_entry_points.load(env={})


def test_hookwrapper_runs_around_the_other_implementations(fake_entry_points: FakeInstalled) -> None:
    calls: list[str] = []

    @hookimpl(hookwrapper=True)
    def exo_register_engine(register: RegisterComponent) -> Generator[None, Any, None]:
        calls.append("before")
        outcome = yield
        outcome.get_result()  # the others ran without raising
        calls.append("after")
        register("watched", lambda ctx: "watched")

    fake_entry_points["alpha"] = _engine_plugin("alpha", calls)
    fake_entry_points["watch"] = _module("watch", exo_register_engine=exo_register_engine)
    plugins = fake_entry_points.load(env={})
    assert calls == ["before", "alpha", "after"]
    assert plugins.registry.get("engine", "watched").plugin == "watch"
    assert plugins.registry.get("engine", "alpha").plugin == "alpha"
    entry = next(e for e in plugins.describe() if e["name"] == "watch")
    assert (entry["hooks"], entry["components"]) == (["exo_register_engine"], {"engine": ["watched"]})


def test_wrapper_sees_a_failing_plugin_named(fake_entry_points: FakeInstalled) -> None:
    seen: list[str] = []

    @hookimpl(wrapper=True)
    def exo_register_engine(register: RegisterComponent) -> Generator[None, None, None]:
        try:
            return (yield)
        except PluginError as exc:
            seen.append(str(exc))
            raise

    @hookimpl
    def failing(register: RegisterComponent) -> None:
        raise ValueError("no")

    fake_entry_points["bad"] = _module("bad", exo_register_engine=failing)
    fake_entry_points["guard"] = _module("guard", exo_register_engine=exo_register_engine)
    with pytest.raises(PluginError, match=r"plugin bad failed in exo_register_engine: ValueError\('no'\)"):
        fake_entry_points.load(env={})
    assert seen == ["plugin bad failed in exo_register_engine: ValueError('no')"]


def test_register_kept_for_later_is_refused(fake_entry_points: FakeInstalled) -> None:
    kept: list[RegisterComponent] = []

    @hookimpl
    def exo_register_discovery(register: RegisterComponent) -> None:
        kept.append(register)

    fake_entry_points["late"] = _module("late", exo_register_discovery=exo_register_discovery)
    fake_entry_points.load(env={})
    with pytest.raises(PluginError, match="called outside the hook"):
        kept[0]("sneaky", lambda ctx: None)
