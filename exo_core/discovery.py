"""The protocol every discovery module implements.

A discovery module finds peers and reports them; it does not connect to them. The node dials each
reported address through the transport, learns the peer's real node id in the handshake, keeps the
connection up (reconnecting with backoff) until the discovery module reports the peer lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio.abc import TaskStatus

from exo_core.transport.ssh.route import SshRoute


@dataclass(frozen=True)
class DiscoveredPeer:
    """A peer a discovery module found.

    Attributes:
        key: identifies the peer within this discovery module (a peers.json key, ``host:port`` or the
            announced node id); ``peer_lost`` names the same key.
        host: address to dial (name or IP literal).
        port: the peer's node (transport) port.
        node_id: the id the peer announced, when the discovery mechanism carries one. Only a label:
            the handshake gives the authoritative id.
        capabilities: device capabilities the peer announced or that a config file gave, as the
            peers.json ``device_capabilities`` mapping (model, chip, memory, flops).
        ssh: reach the peer through this SSH hop (``ssh -W host:port``): ``host:port`` is then the
            node's address as the SSH server sees it. ``None``: dial ``host:port`` over TCP.
    """

    key: str
    host: str
    port: int
    node_id: str | None = None
    capabilities: dict[str, Any] | None = field(default=None, compare=False)
    ssh: SshRoute | None = None

    @property
    def address(self) -> str:
        """``host:port`` (brackets around IPv6 literals), or ``ssh://[user@]host[:sshport]/...``."""
        if self.ssh is not None:
            return self.ssh.url(self.host, self.port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class DiscoverySink(Protocol):
    """Where a discovery module reports what it sees. Both calls are idempotent."""

    async def peer_found(self, peer: DiscoveredPeer) -> None:
        """A peer appeared, or its address or capabilities changed (same ``key``)."""

    async def peer_lost(self, key: str) -> None:
        """A peer went away (removed from the config file, or not heard from within the timeout)."""


class Discovery(Protocol):
    """A discovery module, as returned by a factory registered with ``exo_register_discovery``."""

    async def run(self, sink: DiscoverySink, *, task_status: TaskStatus[None]) -> None:
        """Run until cancelled, reporting peers to ``sink``.

        Call ``task_status.started()`` once the module is ready (its config read, its sockets bound):
        the node starts it with ``await task_group.start(module.run, sink)``. Raise
        :class:`exo_core.errors.ConfigError` before ``started()`` for a configuration the user must fix.
        Every network wait inside must be bounded by a timeout.
        """
        ...
