"""This machine's IPv4 interfaces with their real netmasks (``getifaddrs(3)`` through ctypes).

Used by the ``udp`` discovery module (directed broadcast address per interface) and the ``tcp`` one
(local subnets to scan), and open to third-party discovery modules. Nothing assumes a /24: the network
of each address comes from its own netmask. Pure stdlib, Linux and macOS/BSD; elsewhere
:func:`ipv4_interfaces` returns an empty list.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import os
import socket
import sys
from dataclasses import dataclass

from exo_core.errors import ConfigError

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8


@dataclass(frozen=True)
class Interface:
    """One IPv4 address of one network interface."""

    name: str
    interface: ipaddress.IPv4Interface
    flags: int

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.interface.ip

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.interface.network

    @property
    def is_up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def is_loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def broadcast(self) -> ipaddress.IPv4Address | None:
        """The directed broadcast address computed from the netmask; ``None`` for /31 and /32."""
        if self.network.prefixlen >= 31:
            return None
        return self.network.broadcast_address


class _SockAddr(ctypes.Structure):
    _fields_ = [("head", ctypes.c_uint16), ("port", ctypes.c_uint16), ("addr", ctypes.c_uint8 * 4)]


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_SockAddr)),
    ("ifa_netmask", ctypes.POINTER(_SockAddr)),
    ("ifa_ifu", ctypes.POINTER(_SockAddr)),
    ("ifa_data", ctypes.c_void_p),
]


def _family(sa: _SockAddr) -> int:
    if sys.platform.startswith("linux"):
        return int(sa.head)  # sa_family_t is a native 16-bit integer
    return int(ctypes.string_at(ctypes.addressof(sa), 2)[1])  # BSD: sa_len byte, then sa_family byte


def ipv4_interfaces() -> list[Interface]:
    """Every IPv4 address of every interface (up or not), with its netmask. Empty if unsupported here."""
    if not (sys.platform.startswith("linux") or sys.platform == "darwin" or "bsd" in sys.platform):
        log.warning("listing network interfaces is not supported on %s", sys.platform)
        return []
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        err = ctypes.get_errno()
        log.warning("getifaddrs failed: %s", os.strerror(err))
        return []
    out: list[Interface] = []
    try:
        node = head
        for _ in range(100_000):  # bounded walk of a linked list the kernel gave us
            if not node:
                break
            entry = node.contents
            if entry.ifa_addr and entry.ifa_netmask and _family(entry.ifa_addr.contents) == socket.AF_INET:
                addr = ipaddress.IPv4Address(bytes(entry.ifa_addr.contents.addr))
                mask = ipaddress.IPv4Address(bytes(entry.ifa_netmask.contents.addr))
                name = (entry.ifa_name or b"").decode("utf-8", "replace")
                iface = ipaddress.IPv4Interface(f"{addr}/{mask}")
                out.append(Interface(name, iface, int(entry.ifa_flags)))
            node = entry.ifa_next
    finally:
        libc.freeifaddrs(head)
    return out


def dialable_address(host: str, port: int, advertised: str | None = None) -> tuple[str, str | None]:
    """The address other nodes should put in their peers.json for this node, and a note for the user.

    The advertised address (``--transport-advertise-address``) when set; else the listen host when it is a
    real address; else (a wildcard listener) this machine's first non-loopback IPv4 address that is up,
    with a note naming the others (which one a peer can reach depends on its network).
    """
    if advertised:
        return advertised, None
    if host not in ("", "0.0.0.0", "::"):
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), None
    up = [
        i.address
        for i in ipv4_interfaces()
        if i.flags & IFF_UP and not i.address.is_loopback and not i.address.is_link_local
    ]
    if not up:
        return f"127.0.0.1:{port}", (
            f"this node listens on all interfaces ({host or '0.0.0.0'}) but has no network address up; "
            "peers on this machine can use 127.0.0.1, others need --transport-advertise-address"
        )
    others = ", ".join(str(a) for a in up[1:])
    return f"{up[0]}:{port}", (
        f"this node listens on all interfaces; {up[0]} is one of its addresses"
        + (f" (others: {others}); use the one the peer can reach" if others else "")
        + ", or set --transport-advertise-address"
    )


def parse_names(value: str) -> list[str]:
    """Split a comma-separated interface list (``"eth0, wlan0"``); empty means "automatic"."""
    return [part.strip() for part in value.split(",") if part.strip()]


def select_interfaces(names: list[str], *, flag: str) -> list[Interface]:
    """The interfaces to use.

    Args:
        names: interface names the user chose; empty = every interface that is up, not loopback.
        flag: the CLI flag the names came from, for the error message.

    Raises:
        ConfigError: a named interface does not exist or has no IPv4 address.
    """
    found = ipv4_interfaces()
    if not names:
        return [i for i in found if i.is_up and not i.is_loopback]
    chosen = [i for i in found if i.name in names]
    missing = [n for n in names if n not in {i.name for i in chosen}]
    if missing:
        available = ", ".join(sorted({i.name for i in found})) or "none"
        raise ConfigError(
            f"{flag}: no IPv4 interface called {', '.join(missing)} (interfaces with IPv4: {available})"
        )
    return chosen
