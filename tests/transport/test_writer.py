"""The write side: order kept, large messages take turns by fragment, backlog counted, keepalives."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from exo_core.protocol import Ping, encode_bytes
from exo_core.protocol.frame import Frame, FrameParser
from exo_core.protocol.header import FrameType
from exo_core.transport.settings import TransportSettings
from exo_core.transport.writer import BUFFER_OVERHEAD, FrameWriter


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield a, b
    a.close()
    b.close()


def settings(**overrides: Any) -> TransportSettings:
    return TransportSettings(**{"fragment_size": 16 * 1024, "max_fragment_size": 16 * 1024, **overrides})


class Reader:
    """The peer's side: parses what arrives, as a connection would."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = FrameParser(64 << 20)
        self.frames: list[Frame] = []
        self.bytes_in = 0

    async def until(self, done: Callable[[], bool]) -> None:
        with anyio.fail_after(10):
            while not done():
                try:
                    n = self.sock.recv_into(self.parser.buffer())
                except BlockingIOError:
                    await anyio.wait_readable(self.sock)
                    continue
                assert n, "peer closed"
                self.bytes_in += n
                self.frames.extend(self.parser.advance(n))


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    with anyio.fail_after(10):
        while len(got) < n:
            try:
                data = sock.recv(n - len(got))
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            assert data, "peer closed"
            got += data
    return bytes(got)


async def test_what_the_socket_refuses_is_queued_in_order_and_counted(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    w = FrameWriter(a, settings(), anyio.current_time)
    big = bytes(range(256)) * 1024  # 256 KiB: more than the socket takes at once
    w.write(big)
    queued = w.backlog - BUFFER_OVERHEAD
    assert 0 < queued < len(big)
    w.write([b"tail", bytearray(b"!")])
    assert w.backlog == queued + 5 + 3 * BUFFER_OVERHEAD
    assert not w.idle
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        assert await read_exactly(b, len(big) + 5) == big + b"tail!"
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert w.idle
    assert w.backlog == 0


async def test_large_messages_take_turns_and_a_small_frame_overtakes_them(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    w = FrameWriter(a, settings(), anyio.current_time)
    one, two = b"\x01" * (256 * 1024), b"\x02" * (256 * 1024)
    done: list[bool] = []

    async def send(payload: bytes) -> None:
        done.append(await w.write_fragmented(FrameType.TENSOR, [payload]))

    reader = Reader(b)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        tg.start_soon(send, one)
        tg.start_soon(send, two)
        await reader.until(lambda: reader.bytes_in >= 64 * 1024)  # the writer is blocked mid-tensors
        w.write(encode_bytes(Ping(7)))
        await reader.until(lambda: len(reader.frames) == 3)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert [f.type for f in reader.frames] == [FrameType.PING, FrameType.TENSOR, FrameType.TENSOR]
    assert [bytes(f.payload) for f in reader.frames[1:]] == [one, two]
    assert done == [True, True]


async def test_abort_releases_a_waiting_large_send(pair: tuple[socket.socket, socket.socket]) -> None:
    w = FrameWriter(pair[0], settings(), anyio.current_time)
    result: list[bool] = []

    async def send() -> None:
        result.append(await w.write_fragmented(FrameType.TENSOR, [bytes(1 << 20)]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)  # no writer task: nothing is ever queued
        await anyio.wait_all_tasks_blocked()
        w.abort()
    assert result == [False]


async def test_reading_resumes_once_the_backlog_is_down_to_half(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    s = settings(max_write_backlog=64 * 1024)
    w = FrameWriter(a, s, anyio.current_time)
    w.write(bytes(256 * 1024))
    resumed_at: list[int] = []

    def resume() -> None:
        resumed_at.append(w.backlog)
        w.resume_reading = None

    w.resume_reading = resume
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        await read_exactly(b, 256 * 1024)
        tg.cancel_scope.cancel()
    assert len(resumed_at) == 1
    assert resumed_at[0] <= s.max_write_backlog // 2


@pytest.mark.parametrize("on", [True, False])
async def test_keepalives_only_once_enabled(pair: tuple[socket.socket, socket.socket], on: bool) -> None:
    a, b = pair
    w = FrameWriter(a, settings(keepalive_interval=0.05), anyio.current_time)
    w.keepalives = on
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    reader = Reader(b)
    if on:
        await reader.until(lambda: bool(reader.frames))
        assert {f.type for f in reader.frames} == {FrameType.PING}
    else:
        with pytest.raises(BlockingIOError):
            b.recv(1)
