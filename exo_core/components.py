"""The component registry that the plugin hooks fill.

A *component* is one named, swappable implementation of a kind (a discovery module, a transport, a
partitioner, an inference engine). Plugins add components through the ``register`` callable their hook
receives; the core owns the registry, rejects duplicate names naming both plugins, and builds a component
only when it is selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from exo_core.errors import ComponentUnavailableError, PluginError, UnknownComponentError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from exo_core.settings import CoreSettings

Kind = Literal["discovery", "transport", "partitioner", "engine"]
KINDS: tuple[Kind, ...] = get_args(Kind)

#: Distributions that provide the first-party components, named in "not installed" errors.
FIRST_PARTY_PACKAGES: dict[Kind, dict[str, str]] = {
    "discovery": {
        "manual": "exo-discovery-manual",
        "direct": "exo-discovery-manual",
        "udp": "exo-discovery-udp",
        "tcp": "exo-discovery-tcp",
    },
    "engine": {"numpy": "exo-engine-numpy", "mlx": "exo-engine-mlx"},
    "transport": {"tcp": "exo-core"},
    "partitioner": {"ring-memory-weighted": "exo-core"},
}

#: The CLI flag that selects a component of each kind (used in error messages).
SELECTOR_FLAGS: dict[Kind, str] = {
    "discovery": "--discovery-module",
    "engine": "--inference-engine",
    "transport": "--transport",
    "partitioner": "--partitioner",
}


@dataclass(frozen=True)
class ComponentContext:
    """What a component factory receives when the core builds the selected component.

    Attributes:
        core: the node's core settings (ports, cluster key, ...).
        settings: an instance of the settings model the component registered (``None`` if it has none),
            read from CLI flags, then environment variables, then defaults.
        node_id: this node's id (persistent UUID unless ``--node-id`` was given).
    """

    core: CoreSettings
    settings: BaseSettings | None
    node_id: str


Factory = Callable[[ComponentContext], Any]
AvailabilityCheck = Callable[[], "str | None"]


class RegisterComponent(Protocol):
    """The ``register`` callable every ``exo_register_*`` hook receives."""

    def __call__(
        self,
        name: str,
        factory: Factory,
        *,
        settings: type[BaseSettings] | None = None,
        description: str = "",
        available: AvailabilityCheck | None = None,
    ) -> None:
        """Register one component.

        Args:
            name: the name users select it by (``--discovery-module NAME``); unique within its kind.
            factory: called with a :class:`ComponentContext` when the component is selected; returns the
                component object (see the protocol of its kind). Import heavy libraries inside it.
            settings: a pydantic-settings model with its own ``env_prefix``; its fields become CLI flags
                (``cli_prefix`` ClassVar + field name, kebab-case) shown in ``exo --help``.
            description: one line shown by ``exo plugins`` and in errors.
            available: optional cheap check returning ``None`` when the component can run here, or the
                reason it cannot (e.g. "mlx is not importable: ..."); ``auto`` choices skip unavailable ones.
        """


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: Kind
    name: str
    factory: Factory
    plugin: str
    settings: type[BaseSettings] | None = None
    description: str = ""
    available: AvailabilityCheck | None = None

    def unavailable_reason(self) -> str | None:
        """``None`` when the component can run here, else why not."""
        if self.available is None:
            return None
        try:
            return self.available()
        except Exception as exc:  # a broken check must not take the CLI down
            return f"availability check failed: {exc!r}"

    def build(self, context: ComponentContext) -> Any:
        """Build the component, turning an unavailable component into a clear error."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise ComponentUnavailableError(
                f"{self.kind} '{self.name}' (plugin {self.plugin}) cannot run here: {reason}"
            )
        return self.factory(context)


@dataclass
class Registry:
    """All components, by kind and name, with the plugin that registered each."""

    components: dict[Kind, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    #: plugin name -> error text, for plugins whose import failed (used in "not installed" errors)
    failed_plugins: dict[str, str] = field(default_factory=dict)
    #: plugin name -> its distribution, for installed plugins blocked with ``-p no:NAME`` /
    #: ``EXO_DISABLED_PLUGINS`` (an unknown component they would provide says so, not "install ...")
    blocked_plugins: dict[str, str] = field(default_factory=dict)

    def register_for(self, kind: Kind, plugin: str) -> RegisterComponent:
        """The ``register`` callable handed to ``plugin``'s ``exo_register_<kind>`` hook."""

        def register(
            name: str,
            factory: Factory,
            *,
            settings: type[BaseSettings] | None = None,
            description: str = "",
            available: AvailabilityCheck | None = None,
        ) -> None:
            self.add(
                Component(
                    kind=kind,
                    name=name,
                    factory=factory,
                    plugin=plugin,
                    settings=settings,
                    description=description,
                    available=available,
                )
            )

        return register

    def add(self, component: Component) -> None:
        """Add a component; a name already taken in its kind is an error naming both plugins."""
        if not component.name or not isinstance(component.name, str):
            raise PluginError(f"plugin {component.plugin} registered a {component.kind} with an empty name")
        if not callable(component.factory):
            raise PluginError(
                f"plugin {component.plugin} registered {component.kind} '{component.name}' "
                "with a factory that is not callable"
            )
        existing = self.components[component.kind].get(component.name)
        if existing is not None:
            raise PluginError(
                f"{component.kind} '{component.name}' is registered twice: by plugin {existing.plugin} "
                f"and by plugin {component.plugin}; uninstall or block one (-p no:NAME)"
            )
        self.components[component.kind][component.name] = component

    def names(self, kind: Kind) -> list[str]:
        """Registered names of one kind, in registration order."""
        return list(self.components[kind])

    def __iter__(self) -> Iterator[Component]:
        for kind in KINDS:
            yield from self.components[kind].values()

    def get(self, kind: Kind, name: str) -> Component:
        """The component of ``kind`` called ``name``, or an error listing what is installed."""
        try:
            return self.components[kind][name]
        except KeyError:
            raise UnknownComponentError(self._unknown_message(kind, name)) from None

    def _unknown_message(self, kind: Kind, name: str) -> str:
        label = "discovery module" if kind == "discovery" else kind
        installed = ", ".join(self.names(kind)) or "none"
        package = FIRST_PARTY_PACKAGES.get(kind, {}).get(name)
        blocked = sorted(p for p, dist in self.blocked_plugins.items() if package and dist == package)
        if blocked:
            hint = (
                f"{package} is installed but its plugin {', '.join(blocked)} is blocked "
                f"({' '.join('-p no:' + p for p in blocked)} or EXO_DISABLED_PLUGINS): unblock it"
            )
        elif package:
            hint = f"install {package}"
        else:
            hint = "install the package that provides it (an entry point in group 'exo_core.plugins')"
        msg = f"no {label} '{name}' (installed: {installed}); {hint}"
        if self.failed_plugins:
            failed = "; ".join(f"{p}: {err}" for p, err in sorted(self.failed_plugins.items()))
            msg += f" (plugins that failed to import: {failed})"
        return msg
