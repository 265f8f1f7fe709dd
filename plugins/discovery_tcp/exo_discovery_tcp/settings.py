"""Settings of the ``tcp`` discovery module (env prefix ``EXO_DISCOVERY_TCP_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TcpDiscoverySettings(BaseSettings):
    """Flags of ``--discovery-module tcp``."""

    model_config = SettingsConfigDict(env_prefix="EXO_DISCOVERY_TCP_", extra="ignore", validate_default=True)
    cli_prefix: ClassVar[str] = "tcp-"

    discovery_targets: str = Field(
        "",
        description="where to say hello, comma-separated: hosts, host:port, CIDR ranges (10.0.0.0/24); "
        "one reachable node is enough, the others are learned from it",
        json_schema_extra={"cli_flag": "--discovery-targets"},
    )
    discovery_port: int = Field(
        5678,
        ge=1,
        le=65535,
        description="TCP port of discovery hellos (listened on, and the targets' default)",
    )
    discovery_bind_host: str = Field(
        "0.0.0.0", description="address the TCP discovery listener binds (a specific one is also the source)"
    )
    scan_local_subnets: bool = Field(
        True, description="also say hello to every host of the local subnets of the discovery interfaces"
    )
    discovery_interfaces: str = Field(
        "",
        description="interfaces whose subnets are scanned, comma-separated; default: every interface that "
        "is up, except loopback",
    )
    max_scan_hosts: int = Field(
        1024,
        ge=1,
        le=65536,
        description="most hosts tried per CIDR range or local subnet (larger ones narrowed)",
    )
    hello_interval: float = Field(
        5.0, gt=0, le=3600, description="seconds between two hellos to the targets and known peers"
    )
    scan_interval: float = Field(
        30.0, gt=0, le=86400, description="seconds between two scans of CIDR ranges and local subnets"
    )
    peer_timeout: float = Field(
        20.0, gt=0, le=86400, description="seconds without a hello after which a peer is dropped"
    )
    concurrency: int = Field(32, ge=1, le=1024, description="most discovery connections in flight at once")
    connect_timeout: float = Field(
        1.0, gt=0, le=60, description="seconds to open a discovery connection (an exchange gets twice that)"
    )
