"""The ``direct`` discovery module: exactly one peer, from ``--peer-host`` and ``--peer-port``, or over an
SSH link with ``--peer-ssh [user@]host[:sshport]`` (``--peer-host`` and ``--peer-port`` are then the node's
address as the SSH server sees it: 127.0.0.1 and 50051 unless given).

The node keeps the connection to it up (the transport reconnects with backoff); this module only
names the peer.
"""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from exo_core.discovery import DiscoveredPeer, DiscoverySink
from exo_core.errors import ConfigError
from exo_core.transport.ssh.route import (
    DEFAULT_NODE_PORT,
    DEFAULT_REMOTE_HOST,
    SshRoute,
    is_ssh_url,
    parse_ssh_url,
)


class DirectDiscovery:
    """One peer given on the command line.

    Args:
        host: the peer's host name or IP address.
        port: the peer's node port.
        ssh: ``[user@]host[:sshport]`` (or ``ssh://...``) to reach the peer through.

    Raises:
        ConfigError: a missing or invalid host or port, naming the flag and its environment variable.
    """

    KEY = "direct"

    def __init__(self, host: str | None, port: int | None, ssh: str | None = None) -> None:
        route: SshRoute | None = None
        if ssh is not None and ssh.strip():
            try:
                if is_ssh_url(ssh):
                    route, url_host, url_port = parse_ssh_url(ssh.strip())
                    host, port = host or url_host, port or url_port
                else:
                    route = SshRoute.parse(ssh)
            except ValueError as exc:
                raise ConfigError(f"--peer-ssh (EXO_DISCOVERY_DIRECT_PEER_SSH): {exc}") from None
            host = host or DEFAULT_REMOTE_HOST
            port = port or DEFAULT_NODE_PORT
        missing = []
        if host is None or not host.strip():
            missing.append("--peer-host (EXO_DISCOVERY_DIRECT_PEER_HOST)")
        if port is None:
            missing.append("--peer-port (EXO_DISCOVERY_DIRECT_PEER_PORT)")
        if missing:
            raise ConfigError(
                f"--discovery-module direct needs {' and '.join(missing)}, "
                "e.g. --peer-host 10.0.0.2 --peer-port 50051 (or --peer-ssh user@host)"
            )
        assert host is not None and port is not None
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if any(c.isspace() for c in host):
            raise ConfigError(f"--peer-host: {host!r} is not a host name or IP address")
        if not 1 <= port <= 65535:
            raise ConfigError(f"--peer-port: {port} is not a port number (1-65535)")
        self.peer = DiscoveredPeer(key=self.KEY, host=host, port=port, ssh=route)

    async def run(
        self, sink: DiscoverySink, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report the peer, then wait until cancelled."""
        await sink.peer_found(self.peer)
        task_status.started()
        await anyio.sleep_forever()
