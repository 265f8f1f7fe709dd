"""Settings of the ``tcp`` transport (env prefix ``EXO_TRANSPORT_``, CLI flags ``--transport-...``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from exo_core.protocol.frame import DEFAULT_MAX_FRAME_SIZE


class TransportSettings(BaseSettings):
    """Limits and timeouts of the TCP transport. Defaults suit LANs and SSH tunnels."""

    model_config = SettingsConfigDict(env_prefix="EXO_TRANSPORT_", extra="ignore", validate_default=True)
    cli_prefix: ClassVar[str] = "transport-"

    max_frame_size: int = Field(
        DEFAULT_MAX_FRAME_SIZE,
        ge=64 * 1024,
        description="largest message accepted, in bytes (checked before any buffer is allocated)",
    )
    fragment_size: int = Field(
        256 * 1024,
        ge=4096,
        description="messages larger than this are sent in fragments (at first of this size) so pings "
        "are not stuck behind them",
    )
    max_fragment_size: int = Field(
        8 * 1024 * 1024,
        ge=4096,
        description="fragments grow up to this size while the link writes each within a few milliseconds "
        "(fewer system calls on fast links; pings still never wait long)",
    )
    connect_timeout: float = Field(5.0, gt=0, description="seconds to wait for a TCP connection to open")
    handshake_timeout: float = Field(5.0, gt=0, description="seconds allowed for HELLO and authentication")
    request_timeout: float = Field(30.0, gt=0, description="default seconds to wait for a reply to a request")
    keepalive_interval: float = Field(
        2.0, gt=0, description="send a keepalive PING after this many idle seconds on a connection"
    )
    idle_timeout: float = Field(
        10.0, gt=0, description="close a connection when nothing arrived on it for this many seconds"
    )
    frame_timeout: float = Field(
        10.0, gt=0, description="seconds a started frame may take beyond what min_transfer_rate allows"
    )
    min_transfer_rate: int = Field(
        64 * 1024,
        ge=1,
        description="bytes per second a peer must keep up while sending a frame (slow senders)",
    )
    write_timeout: float = Field(
        30.0,
        gt=0,
        description="close a connection when the peer reads nothing for this many seconds, or its write "
        "backlog stays over max_write_backlog this long",
    )
    max_write_backlog: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="bytes queued for sending to one peer (each queued buffer counts 256 bytes more) beyond "
        "which the node stops reading from that peer until it reads what it asked for (backpressure)",
    )
    drain_timeout: float = Field(
        5.0, gt=0, description="seconds a duplicate connection is kept for in-flight frames after GOAWAY"
    )
    reconnect_initial: float = Field(
        0.2, gt=0, description="first delay before redialing a lost peer, seconds"
    )
    reconnect_max: float = Field(10.0, gt=0, description="cap of the exponential redial backoff, seconds")
    max_connections: int = Field(
        512,
        ge=1,
        description="most connections that finished the handshake (inbound and outbound); a peer beyond it "
        "is refused with ERROR UNAVAILABLE",
    )
    max_handshakes: int = Field(
        64,
        ge=1,
        description="most inbound connections still in the handshake (apart from max_connections); a new "
        "one beyond it closes the oldest waiting one, from the source address holding the most",
    )
    max_handshakes_per_address: int = Field(
        16,
        ge=1,
        description="most inbound connections in the handshake from one source address; a new one beyond "
        "it closes that address's oldest waiting one",
    )
    advertise_address: str | None = Field(
        None,
        description="host:port peers should dial to reach this node; default: the listen address "
        "(just :port when listening on all interfaces, peers then use the address they see)",
    )
    ssh_command: str | None = Field(
        None,
        validation_alias=AliasChoices("ssh_command", "EXO_SSH_COMMAND"),
        json_schema_extra={"cli_flag": "--ssh-command", "env_var": "EXO_SSH_COMMAND"},
        description="program and options that open SSH links to ssh:// peers, split like a shell would, ~ "
        'and $VARIABLES expanded (as GIT_SSH_COMMAND for git), e.g. "ssh -F ~/.ssh/exo_config -i '
        '~/.ssh/exo_key"; exo adds -o '
        "BatchMode=yes, ExitOnForwardFailure=yes, ServerAliveInterval=5, ServerAliveCountMax=3, "
        "ConnectTimeout, -p and -W HOST:PORT DESTINATION (default: ssh)",
    )
