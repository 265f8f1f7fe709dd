"""Settings of the ``manual`` (env prefix ``EXO_DISCOVERY_MANUAL_``) and ``direct``
(``EXO_DISCOVERY_DIRECT_``) discovery modules."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ManualDiscoverySettings(BaseSettings):
    """Flags of ``--discovery-module manual``."""

    model_config = SettingsConfigDict(
        env_prefix="EXO_DISCOVERY_MANUAL_", extra="ignore", validate_default=True
    )
    cli_prefix: ClassVar[str] = "discovery-"

    config_path: Path | None = Field(
        None,
        description="peers.json listing the peers (manual discovery); reloaded when it changes",
    )
    config_poll_interval: float = Field(
        1.0, gt=0, le=3600, description="seconds between two checks of the peers file for changes"
    )


class DirectDiscoverySettings(BaseSettings):
    """Flags of ``--discovery-module direct``."""

    model_config = SettingsConfigDict(
        env_prefix="EXO_DISCOVERY_DIRECT_", extra="ignore", validate_default=True
    )
    cli_prefix: ClassVar[str] = ""

    peer_host: str | None = Field(None, description="host of the one peer (direct discovery)")
    peer_port: int | None = Field(
        None, ge=1, le=65535, description="node port of the one peer (direct discovery)"
    )
    peer_ssh: str | None = Field(
        None,
        description="reach the one peer over an SSH link: [user@]host[:sshport] (direct discovery); "
        "--peer-host/--peer-port then default to 127.0.0.1:50051, the node as the SSH server sees it",
    )
