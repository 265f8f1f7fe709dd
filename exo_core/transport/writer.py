"""The write side of a connection: an ordered queue of buffers flushed with ``sendmsg``, fair fragmenting.

A small frame is written straight from the caller when nothing is queued (no task switch); the rest waits in
an ordered queue of buffers that the connection's writer task flushes with scatter-gather ``sendmsg``. A
large message is cut into ``FRAGMENT`` frames that the writer queues one at a time, only when the queue is
empty, so a small frame (a ``PONG``) waits for at most one fragment, never for the whole tensor; several
large messages take turns, one fragment each. :class:`~.pacing.FragmentPacer` sizes the fragments.

What is queued is counted in :attr:`FrameWriter.backlog` (bytes plus a per-buffer overhead), which the
reading side compares with ``max_write_backlog`` to apply backpressure. The writer knows nothing of closing
or of the peer's name: it raises ``OSError``/``TimeoutError`` and the :class:`~.connection.Connection`
decides what that means.
"""

from __future__ import annotations

import itertools
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import anyio

from exo_core.protocol.codec import encode_bytes
from exo_core.protocol.control import Ping
from exo_core.protocol.frame import Buffer, Fragmenter
from exo_core.transport.pacing import FragmentPacer
from exo_core.transport.settings import TransportSettings

_IOV_MAX = 512
_KEEPALIVE = encode_bytes(Ping(0))
#: What one queued buffer counts in the write backlog beyond its bytes. A flood of tiny replies is bounded by
#: the work it cost, not only by their memory (~256 B each with the memoryview and the object it views):
#: under the default 4 MiB bound at most ~1,000 unread replies wait before the peer is no longer read.
BUFFER_OVERHEAD = 4096


@dataclass(eq=False)
class _Bulk:
    frags: Fragmenter
    done: anyio.Event = field(default_factory=anyio.Event)
    queued_last: bool = False


class FrameWriter:
    """Writes one socket's outgoing frames in order, interleaving large messages fragment by fragment.

    Args:
        sock: the connected, non-blocking socket.
        settings: fragment sizes, ``write_timeout``, ``keepalive_interval`` and ``max_write_backlog``.
        clock: the time source (the event loop's clock).
    """

    def __init__(self, sock: socket.socket, settings: TransportSettings, clock: Callable[[], float]) -> None:
        self.sock = sock
        self.settings = settings
        #: bytes queued plus :data:`BUFFER_OVERHEAD` per queued buffer
        self.backlog = 0
        #: send a PING after ``keepalive_interval`` of silence (off until the handshake is done)
        self.keepalives = False
        #: set while reading is paused for backpressure: called when the backlog falls to half its bound
        self.resume_reading: Callable[[], None] | None = None
        self._inflight: deque[memoryview] = deque()
        self._bulk: deque[_Bulk] = deque()
        self._finishing: list[_Bulk] = []
        self._wake = anyio.Event()
        self._stream_ids = itertools.count(1)
        self._pacer = FragmentPacer(settings.fragment_size, settings.max_fragment_size)
        self._clock = clock
        self._last_send = clock()

    @property
    def idle(self) -> bool:
        """Nothing queued for writing."""
        return not self._inflight and not self._bulk

    def write(self, parts: list[Buffer] | bytes) -> None:
        """Write a small frame at once when nothing is queued, else queue it behind the rest. Never blocks.

        Raises:
            OSError: the socket refused the write (the connection is broken).
        """
        if isinstance(parts, bytes | bytearray):
            parts = [parts]
        if self._inflight:  # keep the order: behind what is queued
            self._queue(parts)
            self._wake.set()
            return
        try:
            n = self.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            n = 0
        else:
            self._last_send = self._clock()
        for p in parts:  # whatever the OS did not take waits for the writer task
            view = memoryview(p).cast("B")
            if n >= len(view):
                n -= len(view)
                continue
            self._inflight.append(view[n:])
            self.backlog += len(view) - n + BUFFER_OVERHEAD
            n = 0
        if self._inflight:
            self._wake.set()

    async def write_fragmented(self, frame_type: int, payload: list[Buffer]) -> bool:
        """Queue one payload as ``FRAGMENT`` frames, interleaved with other traffic.

        Returns:
            True once its last fragment is queued; False if :meth:`abort` came first.
        """
        bulk = _Bulk(Fragmenter(frame_type, payload, next(self._stream_ids)))
        self._bulk.append(bulk)
        self._wake.set()
        await bulk.done.wait()
        return bulk.queued_last

    def abort(self) -> None:
        """The connection is closing: release every :meth:`write_fragmented` waiting."""
        for b in (*self._bulk, *self._finishing):
            b.done.set()

    def _queue(self, parts: list[Buffer]) -> None:
        for p in parts:
            view = memoryview(p).cast("B")
            self._inflight.append(view)
            self.backlog += len(view) + BUFFER_OVERHEAD

    def _flush_some(self) -> None:
        inflight = self._inflight
        while inflight:
            try:
                n = self.sock.sendmsg(list(itertools.islice(inflight, _IOV_MAX)))
            except (BlockingIOError, InterruptedError):
                break
            self._last_send = self._clock()
            while n:
                head = inflight[0]
                if len(head) <= n:
                    n -= len(head)
                    self.backlog -= len(head) + BUFFER_OVERHEAD
                    inflight.popleft()
                else:
                    inflight[0] = head[n:]
                    self.backlog -= n
                    n = 0
        if self.resume_reading is not None and self.backlog <= self.settings.max_write_backlog // 2:
            self.resume_reading()

    async def flush(self) -> None:
        """Write everything queued (not the fragments still to come), waiting for the socket as needed."""
        while self._inflight:
            self._flush_some()
            if self._inflight:
                await anyio.wait_writable(self.sock)

    async def run(self) -> NoReturn:
        """The writer task: flushes the queue, feeds fragments, sends keepalives. Never returns normally.

        Raises:
            TimeoutError: the socket accepted nothing for ``write_timeout`` (the peer does not read).
            OSError: the write failed.
        """
        s = self.settings
        pacer = self._pacer
        while True:
            if self._inflight:
                self._flush_some()
                if self._inflight:
                    if pacer.busy:
                        pacer.waited()
                    with anyio.fail_after(s.write_timeout):
                        await anyio.wait_writable(self.sock)
                continue
            if pacer.busy:
                pacer.finished(self._clock())
            for b in self._finishing:
                b.done.set()
            self._finishing.clear()
            if self._bulk:
                bulk = self._bulk[0]
                parts = bulk.frags.next(pacer.size)
                if parts is None:
                    self._bulk.popleft()
                    bulk.queued_last = True
                    self._finishing.append(bulk)
                else:
                    self._queue(parts)
                    pacer.started(self._clock())
                    self._bulk.rotate(-1)  # round-robin between large messages
                continue
            idle = self._clock() - self._last_send
            with anyio.move_on_after(max(0.0, s.keepalive_interval - idle)):
                await self._wake.wait()
            self._wake = anyio.Event()
            if self.keepalives and not self._inflight and not self._bulk:
                if self._clock() - self._last_send >= s.keepalive_interval:
                    self._queue([_KEEPALIVE])
