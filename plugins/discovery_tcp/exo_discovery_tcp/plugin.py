"""Plugin entry point: registers the ``tcp`` discovery component."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.hookspecs import hookimpl
from exo_discovery_tcp.settings import TcpDiscoverySettings

if TYPE_CHECKING:
    from exo_discovery_tcp.discovery import TcpDiscovery


def build(ctx: ComponentContext) -> TcpDiscovery:
    """Factory of the ``tcp`` discovery module."""
    from exo_core.lan.netif import parse_names
    from exo_core.topology.device import device_capabilities
    from exo_discovery_tcp.discovery import TcpDiscovery

    settings = ctx.settings if isinstance(ctx.settings, TcpDiscoverySettings) else TcpDiscoverySettings()
    key = ctx.core.cluster_key_text()
    return TcpDiscovery(
        node_id=ctx.node_id,
        node_port=ctx.core.node_port,
        capabilities=device_capabilities(),
        cluster_key=key,
        port=settings.discovery_port,
        bind_host=settings.discovery_bind_host,
        targets=parse_names(settings.discovery_targets),
        scan_local_subnets=settings.scan_local_subnets,
        interfaces=parse_names(settings.discovery_interfaces),
        max_scan_hosts=settings.max_scan_hosts,
        hello_interval=settings.hello_interval,
        scan_interval=settings.scan_interval,
        peer_timeout=settings.peer_timeout,
        concurrency=settings.concurrency,
        connect_timeout=settings.connect_timeout,
    )


@hookimpl
def exo_register_discovery(register: RegisterComponent) -> None:
    register(
        "tcp",
        build,
        settings=TcpDiscoverySettings,
        description="LAN discovery by TCP hellos with gossip (port 5678)",
    )
