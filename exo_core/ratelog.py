"""A log line that repeats at most once per interval, saying how many like it it held back.

A flood (idle sockets, half-sent requests, evictions) would otherwise write one line per attempt: the log
becomes the attack's amplifier. The transport and the HTTP server share this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    """Calls ``emit(suppressed)`` at most once per ``interval`` seconds; counts the calls it swallowed.

    Args:
        interval: seconds between two emitted lines.
        clock: the time source.
    """

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, emit: Callable[[int], None]) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        emit(suppressed)

    def warning(self, logger: logging.Logger, msg: str, *args: Any) -> None:
        """``logger.warning(msg, *args)`` through the limit, with " (N more like it in the last T s)" added
        when lines were held back."""

        def emit(held: int) -> None:
            suffix = f" ({held} more like it in the last {self.interval:g} s)" if held else ""
            logger.warning(msg + suffix, *args)

        self(emit)
