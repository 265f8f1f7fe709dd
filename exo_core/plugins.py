"""Building the plugin manager: built-ins, blocked names, entry points, then the component registry.

Nothing here runs at import time: :func:`load_plugins` builds a fresh manager each call from the built-in
plugins and entry points it is given (the real ones by default), so tests and embedding applications get an
isolated set of plugins without patching this module.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Generator, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol, cast

import pluggy

from exo_core import __version__, hookspecs
from exo_core.components import KINDS, Factory, Kind, RegisterComponent, Registry
from exo_core.errors import PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "exo_core.plugins"

#: Plugins that ship inside exo-core, registered before any entry point (plugin name -> module).
BUILTIN_PLUGINS: dict[str, str] = {
    "tcp_transport": "exo_core.transport.plugin",
    "ring_partitioner": "exo_core.topology.plugin",
}


class PluginDistribution(Protocol):
    """The distribution an entry point comes from (:class:`importlib.metadata.Distribution`)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


class PluginEntryPoint(Protocol):
    """What :func:`load_plugins` needs of an entry point (:class:`importlib.metadata.EntryPoint`)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def dist(self) -> PluginDistribution | None: ...

    def load(self) -> Any: ...


@dataclass(frozen=True)
class PluginInfo:
    """Where a loaded plugin came from."""

    name: str
    distribution: str
    version: str
    builtin: bool


@dataclass
class Plugins:
    """A loaded plugin manager and the registry its hooks filled.

    The manager holds each plugin behind a thin wrapper (its ``plugin`` attribute is the module or object
    that was loaded) whose hooks credit what they register to the plugin; names, hook options and order
    are the plugin's own.
    """

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


def installed_entry_points() -> list[PluginEntryPoint]:
    """The entry points of group ``exo_core.plugins`` of every installed distribution."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def load_plugins(
    *,
    disabled: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    extra: Iterable[tuple[str, object]] = (),
    builtins: Mapping[str, str] = BUILTIN_PLUGINS,
    entry_points: Iterable[PluginEntryPoint] | None = None,
) -> Plugins:
    """Build the plugin manager and the component registry.

    Order: ``builtins`` (plugin name -> module name; default :data:`BUILTIN_PLUGINS`); blocked names
    (``disabled``, i.e. ``-p no:NAME``, plus ``EXO_DISABLED_PLUGINS``); ``entry_points`` (default: the
    installed entry points of group ``exo_core.plugins``), all or only the names in ``EXO_PLUGINS=a,b``;
    ``extra`` (name, module-or-object) pairs, for tests; ``check_pending()``; then each ``exo_register_*``
    hook is called once, through ``pm.hook``, so pluggy's ``tryfirst``/``trylast`` and hook wrappers apply.

    A plugin whose import fails is skipped with a warning, unless ``EXO_PLUGINS`` names it (then the
    error is raised). A hook that raises, or a duplicate component name, raises :class:`PluginError`
    naming the plugin(s). See :func:`_call_register_hook` for the order components are listed in.
    """
    env = os.environ if env is None else env
    pm = make_manager()
    registry = Registry()
    info: dict[str, PluginInfo] = {}

    blocked = set(disabled) | set(_split(env.get("EXO_DISABLED_PLUGINS")))
    only = set(_split(env.get("EXO_PLUGINS")))

    for name, module_name in builtins.items():
        if name in blocked:
            registry.blocked_plugins[name] = "exo-core"
            continue
        _register(pm, importlib.import_module(module_name), name)
        info[name] = PluginInfo(name, "exo-core", __version__, builtin=True)

    for name in blocked:
        pm.set_blocked(name)

    seen: set[str] = set()
    found = installed_entry_points() if entry_points is None else entry_points
    for ep in sorted(found, key=lambda e: e.name):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        if ep.name in blocked or pm.is_blocked(ep.name):
            log.debug("plugin %s is blocked", ep.name)
            registry.blocked_plugins[ep.name] = ep.dist.name if ep.dist else ""
            continue
        if only and ep.name not in only:
            continue
        module = _load_entry_point(ep, required=ep.name in only, registry=registry)
        if module is None:
            continue
        if pm.get_plugin(ep.name) is not None:
            raise PluginError(f"two plugins are called {ep.name!r}; uninstall one of them")
        _register(pm, module, ep.name)
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
        _register(pm, plugin, name)
        info[name] = PluginInfo(name, "", "", builtin=False)

    pm.check_pending()

    for kind in KINDS:
        _call_register_hook(pm, kind, registry)
    return Plugins(manager=pm, registry=registry, info=info)


def _load_entry_point(ep: PluginEntryPoint, *, required: bool, registry: Registry) -> object | None:
    try:
        loaded: object = ep.load()
    except Exception as exc:
        if required:
            raise PluginError(f"plugin {ep.name} ({ep.value}) failed to import: {exc!r}") from exc
        log.warning("skipping plugin %s: failed to import %s: %r", ep.name, ep.value, exc)
        registry.failed_plugins[ep.name] = f"{type(exc).__name__}: {exc}"
        return None
    return loaded


# -- crediting registrations to plugins -------------------------------------------------------------------
# pluggy hands every implementation the same ``register`` and does not say which plugin is running, so the
# manager holds each plugin behind a _Credited object whose hook functions record the running plugin here.
_RUNNING: ContextVar[str | None] = ContextVar("exo_running_plugin", default=None)


class _Credited:
    """What the manager holds for one plugin: its hook implementations (same names, same ``hookimpl``
    options, so pluggy orders and wraps them as written), each run with the plugin's name in
    :data:`_RUNNING` and turning a failure into a :class:`PluginError` that names the plugin."""

    def __init__(self, pm: pluggy.PluginManager, name: str, plugin: object) -> None:
        self.plugin = plugin
        marker = f"{hookspecs.PROJECT_NAME}_impl"
        for attr in dir(plugin):
            opts = pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = _credit(name, opts.get("specname") or attr, getattr(plugin, attr))
            setattr(function, marker, dict(opts))
            setattr(self, attr, function)

    def __repr__(self) -> str:
        return repr(self.plugin)


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    pm.register(_Credited(pm, name, plugin), name=name)


def _credit(plugin: str, hook: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def failed(exc: Exception) -> PluginError:
        return PluginError(f"plugin {plugin} failed in {hook}: {exc!r}")

    if inspect.isgeneratorfunction(function):  # a hook wrapper: pluggy drives it as a generator

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            token = _RUNNING.set(plugin)
            try:
                return (yield from function(*args, **kwargs))
            except PluginError:
                raise
            except Exception as exc:
                raise failed(exc) from exc
            finally:
                _RUNNING.reset(token)

        return wrapper

    @functools.wraps(function)
    def implementation(*args: Any, **kwargs: Any) -> Any:
        token = _RUNNING.set(plugin)
        try:
            return function(*args, **kwargs)
        except PluginError:
            raise
        except Exception as exc:
            raise failed(exc) from exc
        finally:
            _RUNNING.reset(token)

    return implementation


def _call_register_hook(pm: pluggy.PluginManager, kind: Kind, registry: Registry) -> None:
    """Call ``exo_register_<kind>`` through ``pm.hook`` and add what each plugin registered to ``registry``.

    Components are listed (``registry.names``, ``auto`` choices, error messages) plugin by plugin:
    ``tryfirst`` implementations first, ``trylast`` ones last, the others in plugin registration order
    (built-ins first; pluggy itself runs those last-registered-first). A name two plugins register is an
    error naming both, the one listed first first.
    """
    staged: dict[str, Registry] = {}

    def register(name: str, factory: Factory, **options: Any) -> None:
        plugin = _RUNNING.get()
        if plugin is None:
            raise PluginError(f"the register of exo_register_{kind} was called outside the hook")
        staged.setdefault(plugin, Registry()).register_for(kind, plugin)(name, factory, **options)

    caller = getattr(pm.hook, f"exo_register_{kind}")
    caller(register=cast(RegisterComponent, register))

    position = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}
    priority: dict[str, int] = {}
    for impl in caller.get_hookimpls():
        rank = 0 if impl.tryfirst else 2 if impl.trylast else 1
        priority[impl.plugin_name] = min(rank, priority.get(impl.plugin_name, rank))
    for plugin in sorted(staged, key=lambda p: (priority.get(p, 1), position.get(p, len(position)))):
        for component in staged[plugin]:
            registry.add(component)
