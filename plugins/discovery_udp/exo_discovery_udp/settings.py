"""Settings of the ``udp`` discovery module (env prefix ``EXO_DISCOVERY_UDP_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UdpDiscoverySettings(BaseSettings):
    """Flags of ``--discovery-module udp``."""

    model_config = SettingsConfigDict(env_prefix="EXO_DISCOVERY_UDP_", extra="ignore", validate_default=True)
    cli_prefix: ClassVar[str] = "udp-"

    broadcast_address: str = Field(
        "",
        description="extra IPv4 address(es) to announce to, comma-separated (a broadcast address such as "
        "192.168.1.255, or a unicast one), besides each interface's own broadcast address",
        json_schema_extra={"cli_flag": "--broadcast-address"},
    )
    discovery_interfaces: str = Field(
        "",
        description="network interfaces to announce on, comma-separated (e.g. eth0,wlan0); "
        "default: every interface that is up, except loopback",
        json_schema_extra={"cli_flag": "--discovery-interfaces"},
    )
    discovery_port: int = Field(
        5678, ge=1, le=65535, description="UDP port discovery announcements are sent to and received on"
    )
    discovery_bind_host: str = Field(
        "0.0.0.0", description="address the UDP discovery socket binds (0.0.0.0 receives broadcasts)"
    )
    broadcast_interval: float = Field(
        2.5, gt=0, le=3600, description="seconds between two announcements of this node"
    )
    peer_timeout: float = Field(
        15.0, gt=0, le=86400, description="seconds without an announcement after which a peer is dropped"
    )
