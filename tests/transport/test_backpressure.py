"""Backpressure: a peer that floods requests and never reads the replies costs a bounded amount of memory,
is closed with a logged reason, and never stalls other peers."""

from __future__ import annotations

import logging
import socket
import time

import anyio
import anyio.lowlevel
import pytest

from exo_core.protocol import Envelope, Hello, Ping, Pong, Ready, encode_bytes
from exo_core.transport.ping import ping
from exo_core.transport.sock import UNSENT_LIMIT
from exo_core.transport.writer import BUFFER_OVERHEAD

from .conftest import make, rss_bytes, running, wait_until

LIMIT = 256 * 1024


async def test_ping_flood_without_reading_is_bounded_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b", max_write_backlog=LIMIT, write_timeout=2.0, idle_timeout=5.0)
    good = make("good")
    async with running(b, good):
        await good.dial("127.0.0.1", b.port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, buffer little
        sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                sock.connect(("127.0.0.1", b.port))
            await anyio.wait_writable(sock)
            sock.send(
                encode_bytes(Hello("flood", dialer=True, tool=True, conn_seq=1)) + encode_bytes(Ready())
            )
            batch = b"".join(
                encode_bytes(Ping(i), Envelope("flood", "b", corr=i, wants_reply=True))
                for i in range(1, 2001)
            )
            rss0 = rss_bytes()
            peak_rss, peak_backlog, sent, worst_rtt = rss0, 0, 0, 0.0
            closed = False

            async def watch() -> None:
                nonlocal peak_rss, peak_backlog, worst_rtt
                while True:
                    peak_rss = max(peak_rss, rss_bytes())
                    peak_backlog = max([peak_backlog, *(c.backlog for c in b._conns)])
                    t0 = time.perf_counter()
                    assert isinstance(await good.request("b", Ping(), timeout=1), Pong)
                    worst_rtt = max(worst_rtt, time.perf_counter() - t0)
                    await anyio.sleep(0.02)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                with anyio.fail_after(20):
                    while sent < 200 << 20:  # 200 MiB of PINGs at most
                        try:
                            sent += sock.send(batch)
                            await (
                                anyio.lowlevel.checkpoint()
                            )  # the flooder shares the event loop with the node
                        except BlockingIOError:
                            with anyio.move_on_after(5):
                                await anyio.wait_writable(sock)
                        except OSError:  # reset by the node
                            closed = True
                            break
                tg.cancel_scope.cancel()
        finally:
            sock.close()
        assert closed, f"still open after {sent} bytes of PINGs"
        assert peak_backlog > LIMIT // 2  # the flood did fill the queue...
        assert peak_backlog <= LIMIT + BUFFER_OVERHEAD + 1024, peak_backlog  # ...to the bound and one reply
        assert peak_rss - rss0 < 32 << 20, (peak_rss - rss0) >> 20
        assert worst_rtt < 1.0  # the other peer never waited behind the flood
        await wait_until(
            lambda: any(
                "has not read its replies" in r.getMessage() or "read nothing for" in r.getMessage()
                for r in caplog.records
            ),
            what="the closing reason in the log",
        )
        assert "good" in b.peers
        assert (await ping("127.0.0.1", b.port, count=1, timeout=2)).node_id == "b"


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="no TCP_NOTSENT_LOWAT here")
async def test_both_ends_bound_what_the_kernel_holds_unsent() -> None:
    """Dialed and accepted sockets alike: a peer that does not read parks little in the kernel, so the
    write backlog (and with it backpressure) starts early."""
    b, a = make("b"), make("a")
    async with running(a, b):
        await a.dial("127.0.0.1", b.port)
        await wait_until(lambda: bool(b._conns) and bool(a._conns))
        socks = [c.sock for t in (a, b) for c in t._conns]
        assert len(socks) == 2
        for s in socks:
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == UNSENT_LIMIT
