"""LanPeerTable: one report per change, departures once, expiry after the timeout, a bounded table."""

from __future__ import annotations

import pytest

from exo_core.discovery import DiscoveredPeer
from exo_core.lan.peers import LanPeerTable
from exo_core.lan.testing import RecordingSink

CAPS = {"model": "m", "chip": "c", "memory": 1, "flops": {"fp32": 1.0, "fp16": 1.0, "int8": 1.0}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_reports_new_and_changed_peers_once() -> None:
    sink, clock = RecordingSink(), Clock()
    table = LanPeerTable(sink, timeout=5, clock=clock)
    await table.seen(DiscoveredPeer("a", "127.0.0.1", 1, "a"))
    await table.seen(DiscoveredPeer("a", "127.0.0.1", 1, "a"))  # a repeat sighting is not a change
    await table.seen(DiscoveredPeer("a", "127.0.0.2", 1, "a"))  # address changed
    await table.seen(DiscoveredPeer("a", "127.0.0.2", 1, "a", CAPS))  # capabilities changed
    assert sink.events == [("found", "a")] * 3
    assert "a" in table and table.get("a") == DiscoveredPeer("a", "127.0.0.2", 1, "a")
    assert table.get("b") is None


async def test_expiry_and_removal_report_each_departure_once() -> None:
    sink, clock = RecordingSink(), Clock()
    table = LanPeerTable(sink, timeout=5, clock=clock)
    await table.seen(DiscoveredPeer("old", "127.0.0.1", 1))
    clock.now += 3
    await table.seen(DiscoveredPeer("new", "127.0.0.2", 1))
    assert [p.key for p in table.peers()] == ["new", "old"]  # most recently seen first
    clock.now += 2.5
    await table.expire()
    await table.expire()
    assert set(sink.peers) == {"new"} and sink.events.count(("lost", "old")) == 1
    await table.remove("new", "said goodbye")
    await table.remove("new", "said goodbye")
    assert sink.events[-1] == ("lost", "new") and sink.events.count(("lost", "new")) == 1
    assert table.peers() == []


async def test_the_table_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink()
    table = LanPeerTable(sink, timeout=5, max_peers=2)
    for i in range(3):
        await table.seen(DiscoveredPeer(f"p{i}", "127.0.0.1", 1000 + i))
    assert set(sink.peers) == {"p0", "p1"} and "p2" not in table
    assert "ignoring peer p2 at 127.0.0.1:1002: already 2 peers" in caplog.text
