"""One TCP connection carrying exo frames: zero-copy reads, scatter-gather writes, fair interleaving.

I/O only: the handshake (:mod:`.handshake`) and message dispatch (:mod:`.tcp`) sit on top.

Writes (:mod:`.writer`): a small frame is written straight from the caller when nothing is queued (no task
switch); the rest waits in an ordered queue of buffers that the connection's writer task flushes with
``sendmsg``. A large message is cut into ``FRAGMENT`` frames that the writer queues one at a time, only when
the queue is empty, so a small frame (a ``PONG``) waits for at most one fragment, never for the whole tensor.

Reads: ``recv_into`` the parser's buffer (a large payload is read straight into its final buffer). Waits are
bounded (:mod:`.deadlines`): ``idle_timeout`` between frames (keepalive PINGs make silence mean death), and
inside a frame a slow-sender deadline of ``frame_timeout`` plus ``1 / min_transfer_rate`` seconds per byte
received.

Backpressure: what waits to be written is bounded by ``max_write_backlog``. A peer whose requests (PINGs,
anything answered) produce replies faster than it reads them would otherwise grow the queue without end:
over the bound the connection stops reading from that peer until the queue is back under half of it, and
closes the connection (with a log line) when it stays over the bound for ``write_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import NoReturn

import anyio
from anyio import CancelScope

from exo_core.protocol.codec import Encoded
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.frame import HANDSHAKE_MAX_FRAME, Buffer, Frame, FrameParser
from exo_core.transport.deadlines import ReadDeadlines
from exo_core.transport.errors import ConnectionClosedError
from exo_core.transport.settings import TransportSettings
from exo_core.transport.writer import FrameWriter

log = logging.getLogger("exo_core.transport")

#: recv calls and bytes per readiness callback: bound how long one busy connection holds the event loop.
_READS_PER_WAKE = 16
_BYTES_PER_WAKE = 4 << 20
#: frames delivered per readiness callback: 4 MiB of PINGs is 150,000 replies, seconds of work
_FRAMES_PER_WAKE = 1024
#: While a large payload is being received, the socket reports readable only once this much of it (or all
#: that is left of it) has arrived: fewer, larger reads and far fewer wake-ups. Nothing else can arrive
#: before those bytes (TCP is ordered), so no small frame is held up. Linux only (epoll honours it).
_LOWAT = 4 << 20
_LOWAT_MIN = 64 << 10
_USE_LOWAT = sys.platform == "linux" and hasattr(socket, "SO_RCVLOWAT")


def clock() -> Callable[[], float]:
    """The event loop's clock (what ``anyio.current_time`` reads, minus its per-call backend lookup)."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # not asyncio
        return anyio.current_time


class Connection:
    """A connected, non-blocking socket speaking exo frames.

    Args:
        sock: a connected socket (made non-blocking with ``TCP_NODELAY``).
        settings: limits and timeouts.
        dialed: this side opened the connection.
        remote: the peer's address as seen on the socket, for logs.
    """

    def __init__(
        self, sock: socket.socket, settings: TransportSettings, *, dialed: bool, remote: str
    ) -> None:
        self.sock = sock
        self.settings = settings
        self.dialed = dialed
        self.remote = remote
        self.label = remote  # becomes "node-id (host:port)" after the handshake
        # frames are capped at HANDSHAKE_MAX_FRAME until the handshake accepts the peer's READY
        self.parser = FrameParser(settings.max_frame_size, handshake_limit=HANDSHAKE_MAX_FRAME)
        #: the handshake has finished: keepalives start only then (a peer that has not authenticated gets
        #: nothing but the handshake's own frames)
        self.ready = False
        #: bytes received so far (a port probe closes having sent none)
        self.bytes_in = 0
        self.closed = False
        self.error: str | None = None
        self.scope: CancelScope | None = None
        self._frames: deque[Frame] = deque()
        self._clock = clock()
        self._writer = FrameWriter(sock, settings, self._clock)
        self._deadlines = ReadDeadlines(settings, self._clock)
        self._resumed = anyio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Callable[[Frame], None] | None = None
        self._read_error: Exception | None = None
        self._pumping = anyio.Event()
        self._lowat = 1

    # ---- writing (the mechanism is :class:`~.writer.FrameWriter`) ----------------------------------------

    def send_nowait(self, parts: list[Buffer] | bytes) -> None:
        """Queue a small frame (written at once when nothing is queued). Never blocks.

        Raises:
            ConnectionClosedError: the connection is closed.
        """
        if self.closed:
            raise ConnectionClosedError(f"connection to {self.label} is closed ({self.error or 'closed'})")
        try:
            self._writer.write(parts)
        except OSError as exc:
            self.fail(f"write failed: {exc}")
            raise ConnectionClosedError(f"connection to {self.label} broke: {exc}") from exc

    async def send(self, encoded: Encoded) -> None:
        """Send a message, fragmenting it when larger than ``fragment_size``; returns once written to the OS.

        Raises:
            ConnectionClosedError: the connection closed before the message was fully written.
        """
        if encoded.payload_size <= self.settings.fragment_size:
            self.send_nowait(encoded.parts)
            return
        await self.send_large(encoded.type, encoded.payload_parts())

    async def send_large(self, frame_type: int, payload: list[Buffer]) -> None:
        """Send one payload as ``FRAGMENT`` frames, interleaved with other traffic."""
        if self.closed:
            raise ConnectionClosedError(f"connection to {self.label} is closed ({self.error or 'closed'})")
        queued_last = await self._writer.write_fragmented(frame_type, payload)
        if self.closed and not queued_last:
            raise ConnectionClosedError(f"connection to {self.label} closed while sending ({self.error})")

    @property
    def backlog(self) -> int:
        """Bytes queued for writing, each queued buffer counted with its bookkeeping (256 bytes more)."""
        return self._writer.backlog

    @property
    def reading_paused(self) -> bool:
        """Reading stopped because the peer does not read what we queued for it (backpressure)."""
        return self._deadlines.paused_at is not None

    @property
    def idle(self) -> bool:
        """Nothing queued for writing."""
        return self._writer.idle

    async def write_loop(self) -> None:
        """The connection's writer task: flushes the queue, feeds fragments, sends keepalives."""
        try:
            await self._writer.run()
        except TimeoutError:
            reason = (
                f"the peer read nothing for {self.settings.write_timeout:g}s "
                f"({self._writer.backlog} bytes queued for it)"
            )
            if not self.closed:
                log.warning("closing connection to %s: %s", self.label, reason)
            self.fail(reason)
        except OSError as exc:
            self.fail(f"write failed: {exc}")

    # ---- reading -------------------------------------------------------------------------------------

    def handshake_done(self) -> None:
        """The handshake accepted the peer's READY: lift the handshake's frame limit and queue the frames
        that arrived behind the READY; keepalives start."""
        self.ready = True
        self._writer.keepalives = True
        self._frames.extend(self.parser.unlock())

    async def read_frame(self) -> Frame:
        """The next complete frame (for the handshake and ``exo ping``; :meth:`pump` serves the rest).

        Raises:
            ProtocolError: the peer broke the framing rules (bad magic, unknown type, oversize, ...).
            ConnectionClosedError: the peer closed or reset the connection.
            TimeoutError: idle too long, or a slow sender (message says which).
        """
        while not self._frames:
            try:
                n = self.sock.recv_into(self.parser.buffer())
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()
                continue
            except OSError as exc:
                raise ConnectionClosedError(f"connection to {self.label} broke: {exc}") from exc
            self._received(n)
        return self._frames.popleft()

    async def pump(self, deliver: Callable[[Frame], None]) -> NoReturn:
        """Read frames until the connection ends, handing each to ``deliver`` as soon as it is complete.

        ``deliver`` runs synchronously on the reading path (it must not block; it starts tasks for real
        work). On asyncio the socket stays registered with the event loop for the connection's lifetime and
        frames are parsed and delivered straight from its readiness callback: no task switch and no
        selector registration per message. Other backends use readiness waits. Never returns normally.

        Raises:
            ProtocolError, ConnectionClosedError, TimeoutError: as :meth:`read_frame`, or whatever
                ``deliver`` raised.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): readiness waits
            writer = self._writer
            while True:
                while self._frames:
                    deliver(self._frames.popleft())
                    if writer.backlog > self.settings.max_write_backlog:
                        await self._wait_backlog()
                deliver(await self.read_frame())
                if writer.backlog > self.settings.max_write_backlog:
                    await self._wait_backlog()
        fd = self.sock.fileno()
        self._deliver = deliver
        self._loop = loop
        self._pumping = anyio.Event()
        loop.add_reader(fd, self._on_readable)
        if self._frames:  # frames that arrived behind the handshake's READY
            loop.call_soon(self._on_readable)
        try:
            while self._read_error is None:
                deadline, why = self._deadlines.next(self._writer.backlog)
                now = self._clock()
                if now >= deadline:
                    raise TimeoutError(why)
                with anyio.move_on_after(deadline - now):
                    await self._pumping.wait()
                self._pumping = anyio.Event()
            raise self._read_error
        finally:
            self._deliver = None
            self._loop = None
            loop.remove_reader(fd)
            if self._lowat != 1:
                self._set_lowat(0)

    async def _wait_backlog(self) -> None:
        """Readiness-wait backends: stop reading until the backlog is back under half its bound."""
        self._pause_reading()
        deadline, why = self._deadlines.next(self._writer.backlog)
        with anyio.move_on_after(max(0.0, deadline - self._clock())):
            await self._resumed.wait()
        if self._deadlines.paused_at is not None:
            raise TimeoutError(why)

    def _pause_reading(self) -> None:
        self._deadlines.pause()
        self._resumed = anyio.Event()
        self._writer.resume_reading = self._resume_reading
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._pumping.set()  # the pumping task's deadline is now the backlog's

    def _resume_reading(self) -> None:
        if self._deadlines.paused_at is None:
            return
        self._deadlines.resume()
        self._writer.resume_reading = None
        self._resumed.set()
        if self._loop is not None and self._deliver is not None:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._loop.call_soon(self._on_readable)  # frames parsed before the pause are still waiting
            self._pumping.set()

    def _on_readable(self) -> None:
        """Readiness callback of :meth:`pump`: read what is there (bounded, for fairness) and deliver it."""
        deliver = self._deliver
        if deliver is None or self._read_error is not None or self._deadlines.paused_at is not None:
            return
        sock, parser, frames, writer = self.sock, self.parser, self._frames, self._writer
        limit = self.settings.max_write_backlog
        budget, reads, quota = _BYTES_PER_WAKE, 0, _FRAMES_PER_WAKE
        try:
            while True:
                while frames:
                    deliver(frames.popleft())
                    if writer.backlog > limit:  # the peer does not read what it asks for: stop reading it
                        self._pause_reading()
                        return
                    quota -= 1
                    if not quota and frames:  # others' turn; the rest are parsed already: come back soon
                        if self._loop is not None and self._deliver is not None:
                            self._loop.call_soon(self._on_readable)
                        return
                if self._deliver is None or budget <= 0 or reads == _READS_PER_WAKE:
                    break  # closed by deliver, or others' turn
                try:
                    n = sock.recv_into(parser.buffer())
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    raise ConnectionClosedError(f"connection to {self.label} broke: {exc}") from exc
                self._received(n)
                budget -= n
                reads += 1
        except Exception as exc:  # handed to the pumping task, which raises it
            self._read_error = exc
            self._deliver = None
            self._pumping.set()
            return
        if _USE_LOWAT:  # always from what is left now: a stale mark could wait for bytes never sent
            self._set_lowat(parser.direct_remaining)

    def _set_lowat(self, remaining: int) -> None:
        want = min(remaining, _LOWAT) if remaining >= _LOWAT_MIN else 1
        if want != self._lowat:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            except OSError:
                return
            self._lowat = want

    def _received(self, n: int) -> None:
        """Account for ``n`` bytes read into the parser's buffer (0: the peer closed)."""
        self.bytes_in += n
        parser = self.parser
        if n == 0:
            if parser.in_frame or parser.in_message:
                raise ProtocolError(ErrorCode.TRUNCATED, "connection closed in the middle of a frame")
            raise ConnectionClosedError(f"{self.label} closed the connection")
        now = self._clock()
        self._frames.extend(parser.advance(n))
        self._deadlines.received(now, n, parser.in_frame)

    async def _wait_readable(self) -> None:
        deadline, why = self._deadlines.next(self._writer.backlog)
        with anyio.move_on_after(max(0.0, deadline - self._clock())) as scope:
            await anyio.wait_readable(self.sock)
        if scope.cancelled_caught:
            raise TimeoutError(why)

    @property
    def close_deadline(self) -> float | None:
        """When a draining connection (GOAWAY sent) gives up waiting for the peer's GOAWAY."""
        return self._deadlines.close_at

    @close_deadline.setter
    def close_deadline(self, when: float | None) -> None:
        self._deadlines.close_at = when
        self._pumping.set()  # the pumping task recomputes its deadline

    # ---- closing -------------------------------------------------------------------------------------

    def fail(self, reason: str) -> None:
        """Mark the connection broken and stop its tasks (from any task)."""
        if not self.closed:
            self.closed = True
            self.error = reason
        self._deliver = None
        self._writer.abort()
        if self.scope is not None:
            self.scope.cancel()

    async def close_gracefully(self, within: float = 1.0) -> None:
        """Flush what is queued (an ``ERROR`` frame), half-close, and read until the peer closes.

        Reading to EOF before closing keeps the kernel from resetting the connection, which would destroy
        the queued frame before the peer reads it. Must run in the task that reads this connection.
        """
        with anyio.move_on_after(within):
            await self._writer.flush()
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
            sink = bytearray(65536)
            while True:
                try:
                    if self.sock.recv_into(sink) == 0:
                        return
                except (BlockingIOError, InterruptedError):
                    await anyio.wait_readable(self.sock)
                except OSError:
                    return
