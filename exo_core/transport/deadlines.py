"""How long a connection's reading may wait before it gives up, and the reason it gives then.

Every read wait is bounded by whichever of these applies:

- between frames, ``idle_timeout`` after the last byte received (keepalive PINGs make silence mean death);
- inside a frame, a slow-sender deadline of ``frame_timeout`` plus ``1 / min_transfer_rate`` seconds per
  byte of the frame received so far;
- while reading is paused for backpressure, ``write_timeout`` after the pause (the peer's silence is then
  ours: the time paused is not counted against it once reading resumes);
- on a draining connection (GOAWAY sent), the close deadline, when it comes first.
"""

from __future__ import annotations

from collections.abc import Callable

from exo_core.transport.settings import TransportSettings


class ReadDeadlines:
    """The read-side timing of one connection.

    Args:
        settings: ``idle_timeout``, ``frame_timeout``, ``min_transfer_rate``, ``write_timeout`` and
            ``max_write_backlog``.
        clock: the time source (the event loop's clock).
    """

    def __init__(self, settings: TransportSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self.last_recv = clock()
        #: when the frame being received started arriving (None: between frames), and its bytes so far
        self.frame_start: float | None = None
        self.frame_bytes = 0
        #: when reading stopped because the backlog went over ``max_write_backlog`` (None: reading)
        self.paused_at: float | None = None
        #: when a draining connection (GOAWAY sent) gives up waiting for the peer's GOAWAY
        self.close_at: float | None = None

    def received(self, now: float, n: int, in_frame: bool) -> None:
        """``n`` bytes arrived at ``now``; ``in_frame``: the parser is in the middle of a frame after them."""
        self.last_recv = now
        if in_frame:
            if self.frame_start is None:
                self.frame_start, self.frame_bytes = now, 0
            self.frame_bytes += n
        else:
            self.frame_start = None

    def pause(self) -> None:
        """Reading stops (backpressure)."""
        self.paused_at = self._clock()

    def resume(self) -> None:
        """Reading resumes: the time paused is not held against the peer."""
        if self.paused_at is None:
            return
        paused_for = self._clock() - self.paused_at
        self.paused_at = None
        self.last_recv += paused_for  # we did not listen meanwhile: the peer's silence was ours
        if self.frame_start is not None:
            self.frame_start += paused_for

    def next(self, backlog: int) -> tuple[float, str]:
        """When the current read wait gives up, and why (``backlog``: bytes queued for the peer)."""
        s = self.settings
        if self.paused_at is not None:  # we stopped reading: the peer's silence is ours
            deadline = self.paused_at + s.write_timeout
            why = (
                f"the peer has not read its replies for {s.write_timeout:g}s: {backlog} bytes queued "
                f"for it (max_write_backlog {s.max_write_backlog}); stopped reading from it meanwhile"
            )
        elif self.frame_start is not None:
            deadline = self.frame_start + s.frame_timeout + self.frame_bytes / s.min_transfer_rate
            why = (
                f"slow sender: a frame is still incomplete after {self._clock() - self.frame_start:.1f}s "
                f"({self.frame_bytes} bytes received)"
            )
        else:
            deadline = self.last_recv + s.idle_timeout
            why = f"nothing received for {s.idle_timeout:g}s (peer dead or unreachable)"
        if self.close_at is not None and self.close_at < deadline:
            deadline, why = self.close_at, "peer did not answer GOAWAY in time"
        return deadline, why
