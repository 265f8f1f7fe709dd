"""How large the next fragment of a large message is: as large as the link drains in a few milliseconds.

A small frame (a ``PONG``, a ``TOKEN``) queued behind a large message waits for at most the fragment being
written, so fragments must stay short *in time*; but each fragment costs a few system calls and event-loop
turns on both sides, so on a fast link (loopback, 10 GbE) small fragments cap throughput. The pacer keeps a
moving average of how fast the socket drained recent fragments and sizes the next one to take about
:data:`TARGET_SECONDS` at that rate: starting at ``fragment_size``, at most doubling per fragment, never
above ``max_fragment_size``. Only fragments the writer had to wait for (or that were slow) count: one that
merely landed in an empty kernel buffer says nothing about the link. On a slow link (an SSH tunnel, Wi-Fi)
fragments therefore stay at ``fragment_size``; one stall on a fast link does not collapse the size.
"""

from __future__ import annotations

from typing import Final

#: Longest a fragment should take to write, seconds (the extra wait of a small frame queued behind it).
TARGET_SECONDS: Final = 0.005


class FragmentPacer:
    """Chooses fragment sizes for one connection from how fast its recent fragments were written.

    Args:
        min_size: the starting (and smallest) fragment size, in bytes.
        max_size: the largest fragment size, in bytes (raised to ``min_size`` if smaller).
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max(min_size, max_size)
        self.size = min_size
        self._started: float | None = None
        self._waited = False
        self._rate: float | None = None  # bytes per second, moving average

    def started(self, now: float) -> None:
        """A fragment of :attr:`size` bytes was queued for writing at ``now``."""
        self._started = now
        self._waited = False

    def waited(self) -> None:
        """The writer had to wait for the socket to accept more of the current fragment."""
        self._waited = True

    def finished(self, now: float) -> None:
        """The current fragment (and anything queued with it) was fully written at ``now``."""
        if self._started is None:
            return
        elapsed = max(now - self._started, 1e-6)
        self._started = None
        if not self._waited and elapsed <= TARGET_SECONDS:
            return  # absorbed by the kernel buffer: no news about the link
        sample = self.size / elapsed
        self._rate = sample if self._rate is None else (self._rate + sample) / 2
        want = self._rate * TARGET_SECONDS
        if want >= 2 * self.size:
            self.size = min(self.max_size, self.size * 2)
        else:
            while self.size > want and self.size > self.min_size:
                self.size = max(self.min_size, self.size // 2)

    @property
    def busy(self) -> bool:
        """A fragment is being written."""
        return self._started is not None
