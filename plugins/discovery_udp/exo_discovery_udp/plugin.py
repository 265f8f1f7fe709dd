"""Plugin entry point: registers the ``udp`` discovery component."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.hookspecs import hookimpl
from exo_discovery_udp.settings import UdpDiscoverySettings

if TYPE_CHECKING:
    from exo_discovery_udp.discovery import UdpDiscovery


def build(ctx: ComponentContext) -> UdpDiscovery:
    """Factory of the ``udp`` discovery module."""
    from exo_core.lan.netif import parse_names
    from exo_core.topology.device import device_capabilities
    from exo_discovery_udp.discovery import UdpDiscovery

    settings = ctx.settings if isinstance(ctx.settings, UdpDiscoverySettings) else UdpDiscoverySettings()
    key = ctx.core.cluster_key_text()
    return UdpDiscovery(
        node_id=ctx.node_id,
        node_port=ctx.core.node_port,
        capabilities=device_capabilities(),
        cluster_key=key,
        port=settings.discovery_port,
        bind_host=settings.discovery_bind_host,
        interfaces=parse_names(settings.discovery_interfaces),
        broadcast_addresses=parse_names(settings.broadcast_address),
        interval=settings.broadcast_interval,
        peer_timeout=settings.peer_timeout,
    )


@hookimpl
def exo_register_discovery(register: RegisterComponent) -> None:
    register(
        "udp",
        build,
        settings=UdpDiscoverySettings,
        description="LAN discovery by UDP broadcast (port 5678)",
    )
