"""Non-blocking TCP sockets driven by anyio's readiness waits (no stream wrapper: zero-copy reads/writes)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket

import anyio

#: Most bytes the kernel holds unsent for one connection (``TCP_NOTSENT_LOWAT``; Linux and macOS). Past it a
#: write is refused and what is left waits in the connection's own queue, where backpressure counts it
#: (:mod:`.connection`). Without it the kernel parked ~36,000 PONGs for a peer that sent PINGs and never read
#: (3.3 MB of PINGs handled, ~1 s of the event loop) before exo's queue grew at all; with it ~3,000.
#: Only unsent bytes count, not bytes in flight, so a fast link's throughput is unchanged (measured on
#: loopback with ``benchmarks/protocol.py``).
UNSENT_LIMIT = 128 << 10


def tune(sock: socket.socket) -> None:
    """Non-blocking, ``TCP_NODELAY`` (small frames go out at once), OS keepalive as a backstop, and at most
    :data:`UNSENT_LIMIT` bytes parked unsent in the kernel."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is not None:
        with contextlib.suppress(OSError):  # an old kernel: the write backlog still bounds exo's side
            sock.setsockopt(socket.IPPROTO_TCP, lowat, UNSENT_LIMIT)


async def connect(host: str, port: int, connect_timeout: float) -> socket.socket:
    """Open a TCP connection to ``host:port`` within ``connect_timeout`` s, trying each resolved address.

    Raises:
        ConnectionRefusedError, TimeoutError, OSError: as the last address failed.
    """
    with anyio.fail_after(connect_timeout):
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last: OSError = OSError(f"{host}:{port} resolved to no address")
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                err = sock.connect_ex(addr)
                if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                    raise OSError(err, f"{errno.errorcode.get(err, err)} connecting to {host}:{port}")
                if err:
                    await anyio.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        if err == errno.ECONNREFUSED:
                            raise ConnectionRefusedError(err, f"connection refused by {host}:{port}")
                        raise OSError(err, f"{errno.errorcode.get(err, err)} connecting to {host}:{port}")
                tune(sock)
                return sock
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                last = exc
        raise last


def listen(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Bind listening sockets for ``host:port`` (one per address family the host resolves to)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and socks[0] is not sock:  # same ephemeral port on every family
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def format_address(host: str, port: int) -> str:
    """``host:port`` with brackets around IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6).

    Raises:
        ValueError: not a ``host:port`` with a port in 1..65535.
    """
    host, sep, port_s = address.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        host, port_s = address, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad port in {address!r}") from None
    if not 1 <= port <= 65535 or not host:
        raise ValueError(f"expected HOST:PORT with a port in 1..65535, got {address!r}")
    return host, port
