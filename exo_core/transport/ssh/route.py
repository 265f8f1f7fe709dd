"""Peer addresses that go through SSH: ``ssh://[user@]host[:sshport][/[remote-host:]port]``.

A node behind SSH is reached with ``ssh -W remote-host:port destination``: the SSH server connects to the
node's port on its side (``remote-host`` defaults to 127.0.0.1, so the remote node may listen on loopback
only) and the frames travel over the ``ssh`` child's stdin and stdout. :class:`SshRoute` is the SSH part
(the destination and its SSH port); the node's own ``host:port`` stays beside it, as for a TCP peer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The remote node's port when an ``ssh://`` address names none (exo's default ``--node-port``).
DEFAULT_NODE_PORT = 50051
#: Where the SSH server connects to when an ``ssh://`` address names no remote host.
DEFAULT_REMOTE_HOST = "127.0.0.1"

_DESTINATION = re.compile(r"^(?:[^@\s/]+@)?(?:\[[0-9A-Fa-f:.%\w]+\]|[^@\s/:\[\]]+)$")


@dataclass(frozen=True)
class SshRoute:
    """The SSH hop to a peer: ``ssh [-p port] destination``.

    Attributes:
        destination: ``[user@]host`` or a ``Host`` alias of the user's ``~/.ssh/config`` (an IPv6 host in
            brackets).
        port: the SSH server's port (``-p``); ``None`` leaves it to ssh (22, or the config's ``Port``).
    """

    destination: str
    port: int | None = None

    def __post_init__(self) -> None:
        if not _DESTINATION.match(self.destination) or self.destination.startswith("-"):
            raise ValueError(
                f"bad SSH destination {self.destination!r}: expected [user@]host (no spaces, no leading '-')"
            )
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"bad SSH port {self.port}: expected 1..65535")

    @property
    def ssh_host(self) -> str:
        """The destination's host part (without ``user@`` and brackets)."""
        return self.destination.rpartition("@")[2].strip("[]")

    @property
    def ssh_target(self) -> str:
        """``host`` or ``host:port`` of the SSH server, for messages."""
        host = self.destination.rpartition("@")[2]
        return host if self.port is None else f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> SshRoute:
        """``[ssh://][user@]host[:sshport]`` (``[v6]:port`` for IPv6).

        Raises:
            ValueError: not such an address.
        """
        rest = text.strip()
        rest = rest.removeprefix("ssh://")
        user, at, hostport = rest.rpartition("@")
        port: int | None = None
        host = hostport
        if hostport.startswith("["):
            end = hostport.find("]")
            if end < 0:
                raise ValueError(f"bad SSH destination {text!r}: unclosed '['")
            host, tail = hostport[: end + 1], hostport[end + 1 :]
            if tail:
                if not tail.startswith(":"):
                    raise ValueError(f"bad SSH destination {text!r}")
                port = _port(tail[1:], text)
        elif hostport.count(":") == 1:
            host, _, port_s = hostport.partition(":")
            port = _port(port_s, text)
        return cls(f"{user}{at}{host}", port)

    def url(self, host: str = DEFAULT_REMOTE_HOST, port: int = DEFAULT_NODE_PORT) -> str:
        """The ``ssh://`` form of this route to the node at ``host:port`` (as seen from the SSH server)."""
        server = self.destination if self.port is None else f"{self.destination}:{self.port}"
        node = str(port) if host == DEFAULT_REMOTE_HOST else f"{_bracket(host)}:{port}"
        return f"ssh://{server}/{node}"

    def command_line(self) -> str:
        """How to reach the same server with a plain ``ssh`` command: ``[-p port] destination``."""
        return self.destination if self.port is None else f"-p {self.port} {self.destination}"

    def __str__(self) -> str:
        return self.destination if self.port is None else f"{self.destination}:{self.port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"bad port {text!r} in {whole!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port {port} in {whole!r}: expected 1..65535")
    return port


def parse_ssh_url(text: str) -> tuple[SshRoute, str, int]:
    """Split ``ssh://[user@]host[:sshport][/[remote-host:]port]`` into the route and the node's address.

    Returns:
        ``(route, remote_host, remote_port)``; the remote host defaults to 127.0.0.1 and the port to 50051.

    Raises:
        ValueError: not such a URL.
    """
    if not text.startswith("ssh://"):
        raise ValueError(f"expected ssh://[user@]host[:sshport][/port], got {text!r}")
    server, _, node = text.removeprefix("ssh://").partition("/")
    if not server:
        raise ValueError(f"no SSH host in {text!r}")
    route = SshRoute.parse(server)
    host, port = DEFAULT_REMOTE_HOST, DEFAULT_NODE_PORT
    node = node.strip("/")
    if node:
        name, sep, port_s = node.rpartition(":")
        if not sep:
            port = _port(node, text)
        elif name.startswith("[") != name.endswith("]") or (":" in name and not name.startswith("[")):
            raise ValueError(f"bad remote address {node!r} in {text!r}: [v6]:port for IPv6")
        else:
            host, port = name.strip("[]"), _port(port_s, text)
            if not host:
                raise ValueError(f"empty remote host in {text!r}")
    return route, host, port


def is_ssh_url(text: str) -> bool:
    """True when ``text`` is an ``ssh://`` address (not a plain ``host:port``)."""
    return text.strip().startswith("ssh://")
