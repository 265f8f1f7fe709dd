"""Bad input: each case gets a log line and a closed connection or an ERROR, and the node keeps serving."""

from __future__ import annotations

import logging
import socket

import anyio
import numpy as np
import pytest

from exo_core.protocol import (
    MAGIC,
    ErrorCode,
    FrameParser,
    FrameType,
    Hello,
    Ping,
    Pong,
    RequestContext,
    Stage,
    Tensor,
    TensorMessage,
    decode,
    encode_bytes,
    encode_frame,
)
from exo_core.transport.ping import ping
from exo_core.transport.types import Incoming

from .conftest import make, rss_bytes, running, wait_until

HELLO = encode_bytes(Hello("evil", tool=True))


async def _exchange(port: int, data: bytes, *, then_wait: float = 2.0) -> list[int]:
    """Send raw bytes, read until the server closes; return the ERROR codes it sent."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    parser = FrameParser()
    codes: list[int] = []
    async with stream:
        await stream.send(data)
        with anyio.move_on_after(then_wait):
            while True:
                try:
                    chunk = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                for f in parser.feed(chunk):
                    if f.type == FrameType.ERROR:
                        _, err = decode(f.type, f.payload)
                        codes.append(err.code)  # type: ignore[union-attr]
    return codes


@pytest.mark.parametrize(
    ("data", "code", "logged"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", ErrorCode.BAD_MAGIC, "bad magic"),
        (b"EXO\x02" + b"\x01\0\0\0\0", ErrorCode.VERSION_MISMATCH, "frame version 2"),
        (MAGIC + b"\x7f\0\0\0\0", ErrorCode.UNKNOWN_TYPE, "unknown message type 0x7f"),
        (MAGIC + b"\x01\xff\xff\xff\xff", ErrorCode.FRAME_TOO_LARGE, "limit is"),
        (MAGIC + b"\x01\0\0\0\x05abc", ErrorCode.TRUNCATED, "middle of a frame"),
        (encode_frame(FrameType.HELLO, b"\0\x01\0\x01garbage"), ErrorCode.MALFORMED, "HELLO"),
        (encode_frame(FrameType.PING, b""), ErrorCode.UNEXPECTED, "expected HELLO"),
    ],
)
async def test_bad_frames_before_handshake(
    caplog: pytest.LogCaptureFixture, data: bytes, code: ErrorCode, logged: str
) -> None:
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b", max_frame_size=1 << 20)
    async with running(b):
        # a truncated frame is only known to be truncated when we close after it
        codes = await _exchange(b.port, data, then_wait=0.3 if code == ErrorCode.TRUNCATED else 2.0)
        if code != ErrorCode.TRUNCATED:
            assert codes == [code]
        await wait_until(lambda: any(logged in r.getMessage() for r in caplog.records), what=logged)
        assert (await ping("127.0.0.1", b.port, count=1, timeout=2)).node_id == "b"


async def test_frames_before_ready_are_capped_whatever_the_frame_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that has not finished the handshake cannot make the node buffer a large frame: a HELLO that
    declares 250 MiB (the frame limit is 256 MiB) is refused at its header, before anything is allocated,
    and so is a large frame sent right behind an early READY; after a real handshake large frames pass."""
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b")
    b.on(FrameType.TENSOR, lambda inc: _echo(inc))
    async with running(b):
        with anyio.fail_after(3):
            codes = await _exchange(b.port, MAGIC + b"\x01" + (250 << 20).to_bytes(4, "big") + bytes(4096))
        assert codes == [ErrorCode.FRAME_TOO_LARGE]
        await wait_until(
            lambda: any("before the handshake finished" in r.getMessage() for r in caplog.records),
            what="the handshake limit's log line",
        )
        early = encode_frame(FrameType.READY, b"") + MAGIC + b"\x10" + (250 << 20).to_bytes(4, "big")
        assert await _exchange(b.port, early + bytes(4096)) == [ErrorCode.UNEXPECTED]  # READY before HELLO
        good = make("good")
        async with running(good):
            await good.dial("127.0.0.1", b.port)
            ctx = RequestContext("r", "good", "m", (Stage("b", 0, 1),))
            big = TensorMessage(ctx, 0, 0, Tensor.from_numpy(np.ones(1 << 18, np.float32)))  # 1 MiB
            assert isinstance(await good.request("b", big, timeout=5), TensorMessage)


async def test_no_keepalive_before_the_handshake_ends() -> None:
    """A client that never finishes the handshake gets the node's HELLO and nothing else, however long it
    stays within the handshake timeout (keepalives start after READY)."""
    b = make("b", keepalive_interval=0.2, handshake_timeout=1.5)
    async with running(b):
        stream = await anyio.connect_tcp("127.0.0.1", b.port)
        parser = FrameParser()
        types: list[FrameType] = []
        async with stream:
            with anyio.move_on_after(1.0):  # five keepalive intervals, inside the handshake timeout
                while True:
                    types += [f.type for f in parser.feed(await stream.receive())]
        assert types == [FrameType.HELLO]


async def test_bad_frames_after_handshake_get_error_replies(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b")
    async with running(b):
        bad_body = encode_frame(FrameType.PING, b"\x02\x08\0\0\0\x09\0\0\x01")  # envelope, no nonce
        codes = await _exchange(
            b.port, HELLO + encode_frame(FrameType.READY, b"") + bad_body + HELLO, then_wait=2
        )
        assert codes == [ErrorCode.MALFORMED, ErrorCode.UNEXPECTED]  # reply to the bad PING, then HELLO again
        msgs = [r.getMessage() for r in caplog.records]
        assert any("malformed PING" in m for m in msgs) and any(
            "HELLO after the handshake" in m for m in msgs
        )


async def test_a_port_probe_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """``nc -z`` and health checks connect and close without a byte: an INFO line, not a WARNING."""
    caplog.set_level(logging.INFO, "exo_core.transport")
    b = make("b")
    async with running(b):
        probe = await anyio.connect_tcp("127.0.0.1", b.port)
        await probe.aclose()
        await wait_until(
            lambda: any("closed before sending anything" in r.getMessage() for r in caplog.records),
            what="the probe's log line",
        )
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        junk = await _exchange(b.port, b"GET / HTTP/1.1\r\n\r\n")  # bytes that are not exo: still warned
        assert junk == [ErrorCode.BAD_MAGIC]
        await wait_until(
            lambda: any(r.levelno == logging.WARNING for r in caplog.records), what="a warning for junk"
        )


async def test_handshake_timeout_and_slowloris(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b", handshake_timeout=0.5, frame_timeout=0.3, min_transfer_rate=1000)
    async with running(b):
        with anyio.fail_after(5):
            silent = await anyio.connect_tcp("127.0.0.1", b.port)
            async with silent:
                assert await _exchange(b.port, b"", then_wait=2) == [ErrorCode.TIMEOUT]
        # slowloris after the handshake: a frame header, then a byte at a time
        stream = await anyio.connect_tcp("127.0.0.1", b.port)
        async with stream:
            await stream.send(HELLO + encode_frame(FrameType.READY, b""))
            await stream.send(MAGIC + b"\x10\0\0\0\x40")
            closed = False
            with anyio.fail_after(5):
                for _ in range(40):
                    try:
                        await stream.send(b"\0")
                    except (anyio.BrokenResourceError, OSError):
                        closed = True
                        break
                    await anyio.sleep(0.1)
                    if any("slow sender" in r.getMessage() for r in caplog.records):
                        closed = True
                        break
            assert closed
        assert (await ping("127.0.0.1", b.port, count=1, timeout=2)).node_id == "b"


@pytest.mark.timeout(120)
async def test_node_survives_10000_malformed_frames_over_100_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, "exo_core.transport")  # 10,000 warnings would only slow this down
    b, good = make("b"), make("good")
    b.on(FrameType.TENSOR, lambda inc: _echo(inc))
    pings_ok = 0
    async with running(b, good):
        await good.dial("127.0.0.1", b.port)
        rng = np.random.default_rng(0)
        handshake = HELLO + encode_frame(FrameType.READY, b"")

        async def attacker(worker: int) -> None:
            for _ in range(10):
                bad = []
                for _ in range(99):
                    body = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
                    bad.append(
                        encode_frame(int(rng.choice([0x10, 0x12, 0x20, 0x21, 0x22, 0x23, 0x24])), body)
                    )
                bad.append(b"JUNK" + bytes(20))  # frame 100: bad magic, connection closed
                await _exchange(b.port, handshake + b"".join(bad), then_wait=3)

        async def prober() -> None:
            nonlocal pings_ok
            ctx = RequestContext("r", "good", "m", (Stage("b", 0, 1),))
            msg = TensorMessage(ctx, 0, 0, Tensor.from_numpy(np.ones(576, np.float32)))
            while True:
                assert isinstance(await good.request("b", Ping(), timeout=2), Pong)
                assert isinstance(await good.request("b", msg, timeout=2), TensorMessage)
                pings_ok += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(prober)
            async with anyio.create_task_group() as attackers:
                for w in range(10):
                    attackers.start_soon(attacker, w)
            tg.cancel_scope.cancel()
        assert pings_ok > 5
        assert (await ping("127.0.0.1", b.port, count=1, timeout=2)).node_id == "b"
        assert "good" in b.peers


async def _echo(incoming: Incoming) -> TensorMessage:
    assert isinstance(incoming.message, TensorMessage)
    return incoming.message


async def test_pre_auth_memory_stays_small_on_a_keyed_node(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18's reproduction: 4 connections send a HELLO header declaring 250 MiB, then the bytes (up to
    62 x 4 MiB each), to a node with a cluster key. Before, RSS grew by 1 GB; now each is refused at its
    header (the handshake's 64 KiB cap; the rest is read into a small sink for at most a second while the
    node closes the connection) and the node's memory stays where it was."""
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b", key="k3y")
    chunk = bytes(4 << 20)
    async with running(b):
        rss0 = peak = rss_bytes()

        async def attack() -> None:
            # a raw socket: the client's own copies (a stream's write buffer) must not count as the node's
            with socket.create_connection(("127.0.0.1", b.port)) as sock:
                sock.setblocking(False)
                pieces = [MAGIC + b"\x01" + (250 << 20).to_bytes(4, "big"), *[chunk] * 62]
                try:
                    for piece in pieces:
                        data = memoryview(piece)
                        while data:
                            try:
                                data = data[sock.send(data[: 1 << 20]) :]
                            except BlockingIOError:
                                with anyio.fail_after(5):
                                    await anyio.wait_writable(sock)
                except OSError:
                    pass  # the node closed the connection

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes())
                await anyio.sleep(0.01)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                async with anyio.create_task_group() as attackers:
                    for _ in range(4):
                        attackers.start_soon(attack)
                tg.cancel_scope.cancel()
        refusals = [r for r in caplog.records if "declares 262144000 bytes, limit is 65536" in r.getMessage()]
        assert len(refusals) == 4
        assert peak - rss0 < 16 << 20, f"RSS grew by {(peak - rss0) >> 20} MiB"
        assert (await ping("127.0.0.1", b.port, cluster_key="k3y", count=1, timeout=2)).node_id == "b"
