from __future__ import annotations

import pytest

from exo_core.components import Component, ComponentContext, Registry
from exo_core.errors import ComponentUnavailableError, PluginError, UnknownComponentError
from exo_core.settings import CoreSettings


def _factory(ctx: ComponentContext) -> str:
    return f"built for {ctx.node_id}"


def test_duplicate_name_names_both_plugins() -> None:
    registry = Registry()
    registry.register_for("discovery", "first_plugin")("same", _factory)
    with pytest.raises(PluginError, match=r"by plugin first_plugin and by plugin second_plugin"):
        registry.register_for("discovery", "second_plugin")("same", _factory)


def test_same_name_in_other_kind_is_fine() -> None:
    registry = Registry()
    registry.register_for("discovery", "a")("tcp", _factory)
    registry.register_for("transport", "b")("tcp", _factory)
    assert registry.names("discovery") == ["tcp"]
    assert registry.names("transport") == ["tcp"]


def test_unknown_component_lists_installed_and_package() -> None:
    registry = Registry()
    registry.register_for("discovery", "p")("manual", _factory)
    registry.register_for("discovery", "p")("tcp", _factory)
    with pytest.raises(UnknownComponentError) as info:
        registry.get("discovery", "udp")
    assert str(info.value) == "no discovery module 'udp' (installed: manual, tcp); install exo-discovery-udp"


def test_unknown_third_party_component_mentions_failed_imports() -> None:
    registry = Registry()
    registry.failed_plugins["broken"] = "ImportError: no module named x"
    with pytest.raises(UnknownComponentError, match=r"installed: none.*broken: ImportError"):
        registry.get("engine", "fancy")


def test_bad_registrations_rejected() -> None:
    registry = Registry()
    with pytest.raises(PluginError, match="empty name"):
        registry.register_for("engine", "p")("", _factory)
    with pytest.raises(PluginError, match="not callable"):
        registry.register_for("engine", "p")("x", "nope")  # type: ignore[arg-type]


def test_build_checks_availability(tmp_path: object) -> None:
    ctx = ComponentContext(core=CoreSettings(node_id="n1"), settings=None, node_id="n1")
    ok = Component("engine", "ok", _factory, plugin="p")
    assert ok.build(ctx) == "built for n1"
    missing = Component("engine", "gpu", _factory, plugin="p", available=lambda: "no GPU here")
    with pytest.raises(
        ComponentUnavailableError, match=r"engine 'gpu' \(plugin p\) cannot run here: no GPU here"
    ):
        missing.build(ctx)

    def broken() -> str | None:
        raise RuntimeError("boom")

    assert "boom" in (
        Component("engine", "b", _factory, plugin="p", available=broken).unavailable_reason() or ""
    )
