"""Handshake: authentication outcomes (logged on both sides), duplicate-dial collapse, reconnect."""

from __future__ import annotations

import logging
import re

import anyio
import pytest

from exo_core.protocol import ErrorCode, Ping, Pong
from exo_core.testing import find_free_ports
from exo_core.transport.errors import HandshakeError

from .conftest import Events, make, running, wait_until


async def test_matching_keys_connect() -> None:
    a, b = make("a", key="s3cret"), make("b", key="s3cret")
    async with running(a, b):
        info = await a.dial("127.0.0.1", b.port)
        assert info.node_id == "b"
        await wait_until(lambda: "a" in b.peers)  # the acceptor registers once our READY arrives
        assert isinstance(await b.request("a", Ping(1)), Pong)


@pytest.mark.parametrize(
    ("key_a", "key_b", "code", "dialer_says", "acceptor_says"),
    [
        ("k3y-AAAA", "k3y-BBBB", ErrorCode.AUTH_FAILED, "failed authentication", "failed authentication"),
        (None, "k3y-BBBB", ErrorCode.AUTH_REQUIRED, "requires a cluster key", "has no cluster key"),
        ("k3y-AAAA", None, ErrorCode.AUTH_REQUIRED, "has no cluster key", "requires a cluster key"),
    ],
)
async def test_wrong_or_missing_key_rejected_on_both_sides(
    caplog: pytest.LogCaptureFixture,
    key_a: str | None,
    key_b: str | None,
    code: ErrorCode,
    dialer_says: str,
    acceptor_says: str,
) -> None:
    caplog.set_level(logging.WARNING, "exo_core.transport")
    a, b = make("a", key=key_a), make("b", key=key_b)
    async with running(a, b):
        with pytest.raises(HandshakeError) as exc:
            await a.dial("127.0.0.1", b.port)
        assert exc.value.code == code
        await wait_until(lambda: any("rejected connection from" in r.getMessage() for r in caplog.records))
        assert a.peers == {} and b.peers == {}
    dialer = [r.getMessage() for r in caplog.records if r.getMessage().startswith("could not connect")]
    acceptor = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected connection")]
    assert any(dialer_says in m for m in dialer), dialer
    assert any(acceptor_says in m for m in acceptor), acceptor
    assert all("k3y" not in m for m in dialer + acceptor)  # the key never shows up in logs


async def test_warns_when_listening_beyond_loopback_without_key(caplog: pytest.LogCaptureFixture) -> None:
    from exo_core.transport.tcp import TcpTransport

    t = TcpTransport("x", host="0.0.0.0", port=0)
    async with running(t):
        pass
    assert any(
        "without a cluster key" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )
    caplog.clear()
    async with running(make("y")):
        pass
    assert not any("without a cluster key" in r.getMessage() for r in caplog.records)


async def test_simultaneous_dials_collapse_to_one_connection() -> None:
    a, b = make("a"), make("b")
    ev_a, ev_b = Events(a), Events(b)
    async with running(a, b):
        a.keep("127.0.0.1", b.port)
        b.keep("127.0.0.1", a.port)
        await wait_until(
            lambda: a._connections == 1 and b._connections == 1 and "a" in b.peers and "b" in a.peers
        )
        await anyio.sleep(0.5)  # no redial flapping
        assert a._connections == 1 and b._connections == 1
        assert a.peers["b"].dialed is True and b.peers["a"].dialed is False  # a < b: a's dial wins
        assert ev_a.kinds("b") == ["up"] and ev_b.kinds("a") == ["up"]
        assert isinstance(await a.request("b", Ping()), Pong)
        assert isinstance(await b.request("a", Ping()), Pong)


async def test_reconnect_with_capped_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "exo_core.transport")
    (port,) = find_free_ports(1)
    a = make("a")
    ev = Events(a)
    async with running(a):
        a.keep("127.0.0.1", port)
        await anyio.sleep(1.2)  # nothing listens yet: attempts back off 0.05, 0.1, 0.2, 0.4, 0.4...
        delays = [float(m) for r in caplog.records for m in re.findall(r"retry in ([\d.]+)s", r.getMessage())]
        assert len(delays) >= 4 and delays[:4] == [0.05, 0.1, 0.2, 0.4] and max(delays) == 0.4
        b = make("b")
        b._requested_port = port
        async with anyio.create_task_group() as tg:
            await tg.start(b.run)
            await wait_until(lambda: "b" in a.peers)
            tg.cancel_scope.cancel()
        await wait_until(lambda: ev.kinds("b") == ["up", "down"])
        b2 = make("b")
        b2._requested_port = port
        async with running(b2):
            await wait_until(lambda: ev.kinds("b") == ["up", "down", "up"])
            assert isinstance(await a.request("b", Ping()), Pong)
        a.forget("127.0.0.1", port)


async def test_dialing_itself_is_refused_once() -> None:
    a = make("a")
    async with running(a):
        with pytest.raises(HandshakeError) as exc:
            await a.dial("127.0.0.1", a.port)
        assert exc.value.code == ErrorCode.SELF_CONNECTION
        assert a.peers == {}
