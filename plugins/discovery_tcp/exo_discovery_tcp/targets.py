"""Parsing ``--discovery-targets`` and computing the local subnets to scan."""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from exo_core.errors import ConfigError
from exo_core.lan.netif import Interface

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Targets:
    """Configured targets: single endpoints (contacted every hello round) and ranges (every scan)."""

    endpoints: tuple[Endpoint, ...]
    ranges: tuple[Endpoint, ...]


def parse_targets(items: Iterable[str], *, default_port: int, max_hosts: int) -> Targets:
    """Parse targets: ``host``, ``host:port``, ``[v6]:port``, ``v6literal`` or a CIDR range
    (``10.0.0.0/24``, optionally ``10.0.0.0/24:5679``).

    Raises:
        ConfigError: naming ``--discovery-targets`` and the bad item.
    """
    endpoints: list[Endpoint] = []
    ranges: list[Endpoint] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if "/" in item:
            net_text, port = _split_port(item, default_port)
            try:
                network = ipaddress.ip_network(net_text, strict=False)
            except ValueError as exc:
                raise ConfigError(f"--discovery-targets: {item!r} is not a CIDR range: {exc}") from None
            size = network.num_addresses - (2 if network.version == 4 and network.prefixlen < 31 else 0)
            if size > max_hosts:
                raise ConfigError(
                    f"--discovery-targets: {item!r} has {size} hosts, more than --tcp-max-scan-hosts "
                    f"({max_hosts}); give a smaller range or raise the limit"
                )
            hosts = (
                network.hosts() if network.prefixlen < network.max_prefixlen else [network.network_address]
            )
            ranges.extend((str(h), port) for h in hosts)
            continue
        host, port = _split_port(item, default_port)
        if not host or any(c.isspace() for c in host):
            raise ConfigError(f"--discovery-targets: {item!r} is not a host, host:port or CIDR range")
        endpoints.append((host, port))
    return Targets(tuple(dict.fromkeys(endpoints)), tuple(dict.fromkeys(ranges)))


def _split_port(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise ConfigError(f"--discovery-targets: {item!r}: missing ']'")
        host, rest = item[1:end], item[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigError(f"--discovery-targets: {item!r}: unexpected text after ']'")
    elif item.count(":") == 1:
        host, port_text = item.split(":")
    else:  # no port, or a bare IPv6 literal
        host, port_text = item, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"--discovery-targets: {item!r}: {port_text!r} is not a port number (1-65535)")
    return host, int(port_text)


def subnet_hosts(interfaces: Iterable[Interface], *, port: int, max_hosts: int) -> list[Endpoint]:
    """Every other host of each interface's subnet (from its real netmask). A subnet larger than
    ``max_hosts`` is narrowed to the largest block around the interface's own address that fits."""
    out: list[Endpoint] = []
    for iface in interfaces:
        network = iface.network
        if network.num_addresses - 2 > max_hosts:
            prefix = 32 - math.floor(math.log2(max_hosts + 2))
            narrowed = ipaddress.IPv4Network(f"{iface.address}/{prefix}", strict=False)
            log.debug(
                "tcp discovery: subnet %s of %s is larger than --tcp-max-scan-hosts (%d): scanning %s",
                network,
                iface.name,
                max_hosts,
                narrowed,
            )
            network = narrowed
        hosts = network.hosts() if network.prefixlen < 31 else iter(network)
        out.extend((str(h), port) for h in hosts if h != iface.address)
    return list(dict.fromkeys(out))
