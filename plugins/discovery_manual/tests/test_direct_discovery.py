"""The ``direct`` discovery module."""

from __future__ import annotations

import anyio
import pytest
from exo_discovery_manual.direct import DirectDiscovery

from exo_core.discovery import DiscoveredPeer
from exo_core.errors import ConfigError
from exo_core.lan.testing import RecordingSink
from exo_core.transport.ssh.route import SshRoute


async def test_reports_the_one_peer_and_runs_until_cancelled() -> None:
    sink = RecordingSink()
    async with anyio.create_task_group() as tg:
        await tg.start(DirectDiscovery("10.0.0.2", 50051).run, sink)
        assert sink.peers == {"direct": DiscoveredPeer("direct", "10.0.0.2", 50051)}
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert sink.events == [("found", "direct")]


def test_ipv6_in_brackets() -> None:
    assert DirectDiscovery("[::1]", 1).peer.address == "[::1]:1"


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        (None, None, r"needs --peer-host \(EXO_DISCOVERY_DIRECT_PEER_HOST\) and --peer-port"),
        ("h", None, r"needs --peer-port \(EXO_DISCOVERY_DIRECT_PEER_PORT\), e.g."),
        ("  ", 5, r"needs --peer-host"),
        ("a b", 5, r"--peer-host: 'a b' is not a host name"),
        ("h", 0, r"--peer-port: 0 is not a port number"),
    ],
)
def test_missing_or_invalid_flags(host: str | None, port: int | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DirectDiscovery(host, port)


def test_peer_over_ssh() -> None:
    peer = DirectDiscovery(None, None, "me@lab:2222").peer
    assert (peer.host, peer.port, peer.ssh) == ("127.0.0.1", 50051, SshRoute("me@lab", 2222))
    assert peer.address == "ssh://me@lab:2222/50051"
    peer = DirectDiscovery("10.0.0.7", 50060, "ssh://jump").peer
    assert (peer.host, peer.port, peer.ssh) == ("10.0.0.7", 50060, SshRoute("jump"))
    peer = DirectDiscovery(None, None, "ssh://jump/50070").peer
    assert (peer.host, peer.port) == ("127.0.0.1", 50070)
    with pytest.raises(
        ConfigError, match=r"--peer-ssh \(EXO_DISCOVERY_DIRECT_PEER_SSH\): bad SSH destination"
    ):
        DirectDiscovery(None, None, "a b")
