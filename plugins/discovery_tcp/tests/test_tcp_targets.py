"""Parsing ``--discovery-targets`` and the local subnets to scan."""

from __future__ import annotations

import ipaddress

from exo_discovery_tcp.targets import parse_targets, subnet_hosts

from exo_core.lan.netif import Interface


def test_target_forms() -> None:
    targets = parse_targets(
        ["h", "h:1", "[::1]:2", "::1", "10.0.0.0/30", "10.0.1.0/31:9", "10.0.2.7/32", " ", "h"],
        default_port=5678,
        max_hosts=16,
    )
    assert targets.endpoints == (("h", 5678), ("h", 1), ("::1", 2), ("::1", 5678))
    assert targets.ranges == (
        ("10.0.0.1", 5678),
        ("10.0.0.2", 5678),
        ("10.0.1.0", 9),
        ("10.0.1.1", 9),
        ("10.0.2.7", 5678),
    )


def test_subnet_hosts_use_the_real_netmask_and_are_bounded() -> None:
    def iface(cidr: str) -> Interface:
        return Interface("eth0", ipaddress.IPv4Interface(cidr), 0x3)

    hosts = subnet_hosts([iface("10.0.0.5/29")], port=7, max_hosts=100)
    assert hosts == [(f"10.0.0.{i}", 7) for i in (1, 2, 3, 4, 6)]  # not itself, not network or broadcast
    wide = subnet_hosts([iface("10.9.200.1/16")], port=7, max_hosts=1024)
    assert len(wide) == 1021 and ("10.9.203.254", 7) in wide and ("10.9.199.1", 7) not in wide  # its /22
