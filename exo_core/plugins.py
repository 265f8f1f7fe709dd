"""Building the plugin manager: built-ins, blocked names, entry points, then the component registry.

Nothing here runs at import time: :func:`load_plugins` builds a fresh manager each call, so tests and
embedding applications get an isolated set of plugins.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from exo_core import __version__, hookspecs
from exo_core.components import KINDS, Registry
from exo_core.errors import PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "exo_core.plugins"

#: Plugins that ship inside exo-core, registered before any entry point (plugin name -> module).
BUILTIN_PLUGINS: dict[str, str] = {
    "tcp_transport": "exo_core.transport.plugin",
    "ring_partitioner": "exo_core.topology.plugin",
}


@dataclass(frozen=True)
class PluginInfo:
    """Where a loaded plugin came from."""

    name: str
    distribution: str
    version: str
    builtin: bool


@dataclass
class Plugins:
    """A loaded plugin manager and the registry its hooks filled."""

    manager: pluggy.PluginManager
    registry: Registry
    info: dict[str, PluginInfo] = field(default_factory=dict)

    def describe(self) -> list[dict[str, Any]]:
        """What ``exo plugins`` prints: one entry per loaded plugin (plus those that failed to import)."""
        out: list[dict[str, Any]] = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:  # blocked
                continue
            info = self.info.get(name) or PluginInfo(name, "", "", builtin=False)
            callers = self.manager.get_hookcallers(plugin) or []
            components: dict[str, list[str]] = {}
            for component in self.registry:
                if component.plugin == name:
                    components.setdefault(component.kind, []).append(component.name)
            out.append(
                {
                    "name": name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "builtin": info.builtin,
                    "hooks": sorted(c.name for c in callers),
                    "components": components,
                }
            )
        for name, error in sorted(self.registry.failed_plugins.items()):
            out.append({"name": name, "error": error})
        return out


def make_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows exo's hook specs and nothing else."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def load_plugins(
    *,
    disabled: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    extra: Iterable[tuple[str, object]] = (),
) -> Plugins:
    """Build the plugin manager and the component registry.

    Order: built-in plugins; blocked names (``disabled``, i.e. ``-p no:NAME``, plus
    ``EXO_DISABLED_PLUGINS``); entry points of group ``exo_core.plugins`` (all, or only the names in
    ``EXO_PLUGINS=a,b``); ``extra`` (name, module-or-object) pairs, for tests; ``check_pending()``; then
    each ``exo_register_*`` hook is called once per plugin with a ``register`` bound to that plugin.

    A plugin whose import fails is skipped with a warning, unless ``EXO_PLUGINS`` names it (then the
    error is raised). A duplicate component name raises :class:`PluginError` naming both plugins.
    """
    env = os.environ if env is None else env
    pm = make_manager()
    registry = Registry()
    info: dict[str, PluginInfo] = {}

    blocked = set(disabled) | set(_split(env.get("EXO_DISABLED_PLUGINS")))
    only = set(_split(env.get("EXO_PLUGINS")))

    for name, module_name in BUILTIN_PLUGINS.items():
        if name in blocked:
            continue
        pm.register(importlib.import_module(module_name), name=name)
        info[name] = PluginInfo(name, "exo-core", __version__, builtin=True)

    for name in blocked:
        pm.set_blocked(name)

    seen: set[str] = set()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        if ep.name in blocked or pm.is_blocked(ep.name):
            log.debug("plugin %s is blocked", ep.name)
            continue
        if only and ep.name not in only:
            continue
        module = _load_entry_point(ep, required=ep.name in only, registry=registry)
        if module is None:
            continue
        if pm.get_plugin(ep.name) is not None:
            raise PluginError(f"two plugins are called {ep.name!r}; uninstall one of them")
        pm.register(module, name=ep.name)
        dist = ep.dist
        info[ep.name] = PluginInfo(
            ep.name, dist.name if dist else "", dist.version if dist else "", builtin=False
        )

    missing = only - seen
    if missing:
        raise PluginError(
            f"EXO_PLUGINS names plugins that are not installed: {', '.join(sorted(missing))} "
            f"(installed: {', '.join(sorted(seen)) or 'none'})"
        )

    for name, plugin in extra:
        pm.register(plugin, name=name)
        info[name] = PluginInfo(name, "", "", builtin=False)

    pm.check_pending()

    for kind in KINDS:
        caller = getattr(pm.hook, f"exo_register_{kind}")
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            try:
                impl.function(register=registry.register_for(kind, impl.plugin_name))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name} failed in exo_register_{kind}: {exc!r}"
                ) from exc
    return Plugins(manager=pm, registry=registry, info=info)


def _load_entry_point(ep: EntryPoint, *, required: bool, registry: Registry) -> ModuleType | None:
    try:
        loaded = ep.load()
    except Exception as exc:
        if required:
            raise PluginError(f"plugin {ep.name} ({ep.value}) failed to import: {exc!r}") from exc
        log.warning("skipping plugin %s: failed to import %s: %r", ep.name, ep.value, exc)
        registry.failed_plugins[ep.name] = f"{type(exc).__name__}: {exc}"
        return None
    return loaded  # type: ignore[no-any-return]
