"""The ``direct`` discovery module: exactly one peer, from ``--peer-host`` and ``--peer-port``.

The node keeps the connection to it up (the transport reconnects with backoff); this module only
names the peer.
"""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from exo_core.discovery import DiscoveredPeer, DiscoverySink
from exo_core.errors import ConfigError


class DirectDiscovery:
    """One peer given on the command line.

    Args:
        host: the peer's host name or IP address.
        port: the peer's node port.

    Raises:
        ConfigError: a missing or invalid host or port, naming the flag and its environment variable.
    """

    KEY = "direct"

    def __init__(self, host: str | None, port: int | None) -> None:
        missing = []
        if host is None or not host.strip():
            missing.append("--peer-host (EXO_DISCOVERY_DIRECT_PEER_HOST)")
        if port is None:
            missing.append("--peer-port (EXO_DISCOVERY_DIRECT_PEER_PORT)")
        if missing:
            raise ConfigError(
                f"--discovery-module direct needs {' and '.join(missing)}, "
                "e.g. --peer-host 10.0.0.2 --peer-port 50051"
            )
        assert host is not None and port is not None
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if any(c.isspace() for c in host):
            raise ConfigError(f"--peer-host: {host!r} is not a host name or IP address")
        if not 1 <= port <= 65535:
            raise ConfigError(f"--peer-port: {port} is not a port number (1-65535)")
        self.peer = DiscoveredPeer(key=self.KEY, host=host, port=port)

    async def run(
        self, sink: DiscoverySink, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report the peer, then wait until cancelled."""
        await sink.peer_found(self.peer)
        task_status.started()
        await anyio.sleep_forever()
