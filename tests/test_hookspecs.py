"""Meta-tests keeping hooks honest: every hook spec is documented and exercised by a test."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

from exo_core import hookspecs
from exo_core.components import KINDS, RegisterComponent
from exo_core.hookspecs import hookimpl
from exo_core.plugins import load_plugins

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(
    name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("exo_")
)


def test_the_four_registries_exist() -> None:
    assert HOOKS == sorted(f"exo_register_{kind}" for kind in KINDS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert f"### `{hook}(register: RegisterComponent) -> None`" in doc
    assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"
    signature = inspect.signature(getattr(hookspecs, hook))
    assert list(signature.parameters) == ["register"]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    tests = [p for p in ROOT.rglob("test_*.py") if ".venv" not in p.parts and p.name != "test_hookspecs.py"]
    users = [p for p in tests if re.search(rf"\b{hook}\b", p.read_text(encoding="utf-8"))]
    assert users, f"no test mentions {hook}"


@pytest.mark.parametrize("kind", KINDS)
def test_each_hook_registers_into_its_kind(kind: str) -> None:
    hook_name = f"exo_register_{kind}"

    def impl(register: RegisterComponent) -> None:
        register(f"meta-{kind}", lambda ctx: kind, description="meta")

    impl.__name__ = hook_name
    mod = types.ModuleType(f"meta_{kind}")
    setattr(mod, hook_name, hookimpl(impl))
    plugins = load_plugins(env={}, extra=[(f"meta_{kind}", mod)])
    component = plugins.registry.get(kind, f"meta-{kind}")  # type: ignore[arg-type]
    assert (component.plugin, component.description) == (f"meta_{kind}", "meta")
