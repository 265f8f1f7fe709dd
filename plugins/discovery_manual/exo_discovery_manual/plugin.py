"""Plugin entry point: registers the ``manual`` and ``direct`` discovery components."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.errors import ConfigError
from exo_core.hookspecs import hookimpl
from exo_discovery_manual.settings import DirectDiscoverySettings, ManualDiscoverySettings

if TYPE_CHECKING:
    from exo_discovery_manual.direct import DirectDiscovery
    from exo_discovery_manual.manual import ManualDiscovery


def build_manual(ctx: ComponentContext) -> ManualDiscovery:
    """Factory of the ``manual`` discovery module."""
    from exo_discovery_manual.manual import ManualDiscovery

    settings = (
        ctx.settings if isinstance(ctx.settings, ManualDiscoverySettings) else ManualDiscoverySettings()
    )
    if settings.config_path is None:
        raise ConfigError(
            "--discovery-module manual needs --discovery-config-path (EXO_DISCOVERY_MANUAL_CONFIG_PATH): "
            "a peers.json file listing the peers"
        )
    return ManualDiscovery(
        settings.config_path.expanduser(), node_id=ctx.node_id, poll_interval=settings.config_poll_interval
    )


def build_direct(ctx: ComponentContext) -> DirectDiscovery:
    """Factory of the ``direct`` discovery module."""
    from exo_discovery_manual.direct import DirectDiscovery

    settings = (
        ctx.settings if isinstance(ctx.settings, DirectDiscoverySettings) else DirectDiscoverySettings()
    )
    return DirectDiscovery(settings.peer_host, settings.peer_port, settings.peer_ssh)


@hookimpl
def exo_register_discovery(register: RegisterComponent) -> None:
    register(
        "manual",
        build_manual,
        settings=ManualDiscoverySettings,
        description="peers from a peers.json file (--discovery-config-path), reloaded when it changes",
    )
    register(
        "direct",
        build_direct,
        settings=DirectDiscoverySettings,
        description="one peer from --peer-host and --peer-port",
    )
