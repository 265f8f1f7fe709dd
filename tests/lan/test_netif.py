"""Interface listing (getifaddrs) against iproute2's view, and interface selection."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys

import pytest

from exo_core.errors import ConfigError
from exo_core.lan.netif import Interface, ipv4_interfaces, parse_names, select_interfaces


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("ip") is None, reason="needs Linux and iproute2")
def test_matches_ip_addr_including_the_real_netmask() -> None:
    shown = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, check=True).stdout)
    expected = {
        (link["ifname"], f"{a['local']}/{a['prefixlen']}")
        for link in shown
        for a in link.get("addr_info", [])
    }
    assert {(i.name, str(i.interface)) for i in ipv4_interfaces()} == expected


def test_loopback_broadcast_comes_from_its_netmask() -> None:
    lo = next(i for i in ipv4_interfaces() if i.address == ipaddress.IPv4Address("127.0.0.1"))
    assert lo.is_loopback and lo.is_up
    assert str(lo.broadcast) == str(lo.network.broadcast_address)


def test_broadcast_of_unusual_prefixes() -> None:
    def iface(cidr: str) -> Interface:
        return Interface("x", ipaddress.IPv4Interface(cidr), 0x1)

    assert str(iface("10.77.2.1/20").broadcast) == "10.77.15.255"
    assert str(iface("192.168.5.9/23").broadcast) == "192.168.5.255"
    assert iface("10.0.0.1/31").broadcast is None and iface("10.0.0.1/32").broadcast is None


def test_selection_by_name_and_errors() -> None:
    assert parse_names(" lo, ,eth9 ") == ["lo", "eth9"]
    assert [i.name for i in select_interfaces(["lo"], flag="--x")] == ["lo"]
    assert all(not i.is_loopback for i in select_interfaces([], flag="--x"))
    with pytest.raises(
        ConfigError, match=r"--x: no IPv4 interface called nosuch9 \(interfaces with IPv4: .*lo"
    ):
        select_interfaces(["lo", "nosuch9"], flag="--x")
