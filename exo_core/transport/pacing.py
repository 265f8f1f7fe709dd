"""How large the next fragment of a large message is: as large as the link drains in a few milliseconds.

A small frame (a ``PONG``, a ``TOKEN``) queued behind a large message waits for at most the fragment being
written, so fragments must stay short *in time*; but each fragment costs a few system calls and event-loop
turns on both sides, so on a fast link (loopback, 10 GbE) small fragments cap throughput. The pacer starts
every connection at ``fragment_size`` and doubles the size (up to ``max_fragment_size``) after a fragment
that the socket drained within half of :data:`TARGET_SECONDS` *while the writer had to wait for it* (a
fragment that merely landed in an empty kernel buffer says nothing about the link's speed); it halves the
size after any fragment that took longer than the target. On a slow link (an SSH tunnel, Wi-Fi) fragments
therefore stay at ``fragment_size``.
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
        elapsed = now - self._started
        self._started = None
        if elapsed > TARGET_SECONDS:
            self.size = max(self.min_size, self.size // 2)
        elif self._waited and elapsed < TARGET_SECONDS / 2:
            self.size = min(self.max_size, self.size * 2)

    @property
    def busy(self) -> bool:
        """A fragment is being written."""
        return self._started is not None
