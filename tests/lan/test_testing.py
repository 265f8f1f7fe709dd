"""The discovery test kit itself: waiting with a deadline, and the child-process driver's factory spec."""

from __future__ import annotations

import pytest

from exo_core.discovery import DiscoveredPeer
from exo_core.lan import _driver
from exo_core.lan.peers import LanPeerTable
from exo_core.lan.testing import RecordingSink, driver, peers_are


async def test_wait_for_returns_when_the_condition_holds_and_fails_after_the_deadline() -> None:
    sink = RecordingSink()
    await sink.peer_found(DiscoveredPeer("a", "127.0.0.1", 1))
    await sink.wait_for(peers_are({"a"}), within=1)
    with pytest.raises(AssertionError, match=r"timed out after 0.05 s; peers=\['a'\]"):
        await sink.wait_for(peers_are({"a", "b"}), within=0.05)


def test_the_driver_builds_a_module_from_an_import_path() -> None:
    spec = {"factory": "exo_core.lan.peers:LanPeerTable", "kwargs": {"sink": RecordingSink(), "timeout": 1}}
    assert isinstance(_driver.build(spec), LanPeerTable)  # any callable; the child then calls its run()
    with pytest.raises(ValueError, match=r"not of the form 'package\.module:attribute'"):
        _driver.build({"factory": "exo_core.lan.peers.LanPeerTable", "kwargs": {}})


async def test_a_child_that_fails_to_start_is_reported() -> None:
    early = pytest.RaisesExc(AssertionError, match="discovery process exited early with code 1")
    with pytest.RaisesGroup(early):  # raised inside the kit's task group
        async with driver("exo_core.lan.nosuchmodule:Nothing", {}):
            pass
