"""Handshake: authentication outcomes (logged on both sides), duplicate-dial collapse, reconnect."""

from __future__ import annotations

import logging
import re

import anyio
import pytest

from exo_core.protocol import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthResponse,
    Envelope,
    Error,
    ErrorCode,
    Frame,
    FrameParser,
    FrameType,
    Hello,
    Ping,
    Pong,
    Ready,
    auth_mac,
    decode,
    encode_bytes,
)
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
        ("k3y-AAAA", "k3y-BBBB", ErrorCode.AUTH_FAILED, "cluster key differs", "failed authentication"),
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
    # the dialer's side is what dial() raises (its caller reports it: the keep loop logs it once)
    dialer = [str(exc.value)]
    acceptor = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected connection")]
    assert any(dialer_says in m for m in dialer), dialer
    assert any(acceptor_says in m for m in acceptor), acceptor
    assert all("k3y" not in r.getMessage() for r in caplog.records)  # the key never shows up in logs
    assert "k3y" not in dialer[0]


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


@pytest.mark.parametrize("key", [None, "k3y"])
async def test_simultaneous_dials_collapse_to_one_connection(key: str | None) -> None:
    a, b = make("a", key=key), make("b", key=key)
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


async def _frames_until_quiet(
    stream: anyio.abc.SocketStream, parser: FrameParser, quiet: float
) -> list[Frame]:
    """Frames received until nothing more came for ``quiet`` seconds (or the peer closed)."""
    frames: list[Frame] = []
    with anyio.move_on_after(quiet * 4):
        while True:
            with anyio.move_on_after(quiet) as idle:
                try:
                    chunk = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return frames
            if idle.cancelled_caught:
                return frames
            frames += [Frame(f.type, bytes(f.payload)) for f in parser.feed(chunk)]
    return frames


async def test_keyed_node_reveals_nothing_before_authentication() -> None:
    """A client that has not proved the key sees the versions and a challenge, nothing else: no node id,
    no capabilities, no keepalive; a wrong MAC gets AUTH_FAILED and still nothing about the node."""
    b = make("secret-node-id", key="k3y", keepalive_interval=0.1, handshake_timeout=2.0)
    async with running(b):
        for wrong_mac in (None, bytes(32)):
            stream = await anyio.connect_tcp("127.0.0.1", b.port)
            async with stream:
                parser = FrameParser()
                if wrong_mac is not None:
                    await stream.send(encode_bytes(Hello.anonymous_of(Hello("x", dialer=True, auth=True))))
                    await stream.send(encode_bytes(AuthChallenge(bytes(32))))
                    await stream.send(encode_bytes(AuthResponse(wrong_mac)))
                frames = await _frames_until_quiet(stream, parser, 0.5)  # five keepalive intervals
            raw = b"".join(bytes(f.payload) for f in frames)
            assert b"secret-node-id" not in raw and b"test" not in raw and b"exo-core" not in raw
            hello = decode(frames[0].type, frames[0].payload)[1]
            assert hello == Hello("", PROTOCOL_VERSION, PROTOCOL_VERSION, auth=True)
            assert frames[1].type == FrameType.AUTH_CHALLENGE
            if wrong_mac is None:
                assert [f.type for f in frames] == [FrameType.HELLO, FrameType.AUTH_CHALLENGE]
            else:  # not even an AUTH_RESPONSE (a MAC to guess the key from offline): just the refusal
                assert [f.type for f in frames[2:]] == [FrameType.ERROR]
                err = decode(frames[2].type, frames[2].payload)[1]
                assert isinstance(err, Error) and err.code == ErrorCode.AUTH_FAILED


async def test_keyed_identity_follows_a_verified_response() -> None:
    """Done by hand, the keyed handshake: anonymous HELLO and challenge both ways, our response, then the
    node's response and full HELLO (only after ours verified), then READY; the connection carries PINGs."""
    key = b"k3y"
    b = make("b", key="k3y")
    async with running(b):
        stream = await anyio.connect_tcp("127.0.0.1", b.port)
        async with stream:
            parser = FrameParser()
            mine = encode_bytes(Hello.anonymous_of(Hello("raw", dialer=True, auth=True)))
            nonce = bytes(range(32))
            await stream.send(mine + encode_bytes(AuthChallenge(nonce)))
            first = await _frames_until_quiet(stream, parser, 0.3)
            assert [f.type for f in first] == [FrameType.HELLO, FrameType.AUTH_CHALLENGE]
            peer_nonce = decode(first[1].type, first[1].payload)[1].nonce  # type: ignore[union-attr]
            mac = auth_mac(key, peer_nonce, nonce, mine[HEADER_SIZE:], bytes(first[0].payload))
            await stream.send(encode_bytes(AuthResponse(mac)))
            second = await _frames_until_quiet(stream, parser, 0.3)
            assert [f.type for f in second] == [FrameType.AUTH_RESPONSE, FrameType.HELLO]
            mac_b = decode(second[0].type, second[0].payload)[1].mac  # type: ignore[union-attr]
            assert mac_b == auth_mac(key, nonce, peer_nonce, bytes(first[0].payload), mine[HEADER_SIZE:])
            full = decode(second[1].type, second[1].payload)[1]
            assert isinstance(full, Hello) and full.node_id == "b" and full.capabilities["chip"] == "test"
            full_mine = Hello("raw", dialer=True, auth=True, tool=True, conn_seq=1)
            await stream.send(encode_bytes(full_mine) + encode_bytes(Ready()))
            third = await _frames_until_quiet(stream, parser, 0.3)
            assert [f.type for f in third][:1] == [FrameType.READY]
            await stream.send(encode_bytes(Ping(7), Envelope("raw", "b", corr=7, wants_reply=True)))
            pong = [f for f in await _frames_until_quiet(stream, parser, 0.3) if f.type == FrameType.PONG]
            assert pong and decode(pong[0].type, pong[0].payload)[1] == Pong(7)


@pytest.mark.parametrize(
    ("hello", "key", "code"),
    [
        (Hello("old", 1, 1, dialer=True, auth=True), "k3y", ErrorCode.VERSION_MISMATCH),  # a version 1 node
        (Hello("old", 1, 1, dialer=True), None, ErrorCode.VERSION_MISMATCH),
        (Hello("leaky", dialer=True, auth=True), "k3y", ErrorCode.UNEXPECTED),  # identity before auth
    ],
)
async def test_version_1_and_identity_before_auth_are_refused(
    caplog: pytest.LogCaptureFixture, hello: Hello, key: str | None, code: ErrorCode
) -> None:
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b", key=key)
    async with running(b):
        stream = await anyio.connect_tcp("127.0.0.1", b.port)
        async with stream:
            await stream.send(encode_bytes(hello))
            frames = await _frames_until_quiet(stream, FrameParser(), 0.5)
        errors = [decode(f.type, f.payload)[1] for f in frames if f.type == FrameType.ERROR]
        assert [e.code for e in errors] == [code]  # type: ignore[union-attr]
        await wait_until(lambda: any("rejected connection" in r.getMessage() for r in caplog.records))


async def test_keyless_handshake_is_one_round_trip() -> None:
    """Without a key the node's full HELLO comes at once, and READY as soon as ours arrived."""
    b = make("b")
    async with running(b):
        stream = await anyio.connect_tcp("127.0.0.1", b.port)
        async with stream:
            parser = FrameParser()
            await stream.send(encode_bytes(Hello("raw", dialer=True, tool=True, conn_seq=1)))
            frames = await _frames_until_quiet(stream, parser, 0.3)
        assert [f.type for f in frames][:2] == [FrameType.HELLO, FrameType.READY]
        hello = decode(frames[0].type, frames[0].payload)[1]
        assert isinstance(hello, Hello) and hello.node_id == "b" and not hello.auth
