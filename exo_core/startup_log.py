"""Start-up logging: a node's first log lines are held until it is up, so a failed start is one line.

While a node starts, the transport and discovery log what they bind and find; if the start then fails (a
peers.json error, a busy port, a plugin's ``ConfigError``), those lines only bury the one that matters.
:func:`hold` keeps records below ERROR in memory; :func:`release` (the node is up) writes them out in order
and lets later ones through; :func:`discard` (the start failed, and ``exo: error: ...`` follows) drops them.
At ``--log-level DEBUG`` nothing is held: every line is written as it happens.
"""

from __future__ import annotations

import logging
from collections import deque

#: records kept at most while holding (the oldest are dropped beyond it)
_MAX_HELD = 10_000


class _Holding(logging.Filter):
    """Attached to the root logger's handlers: keeps records below ERROR while active."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.held: deque[tuple[logging.Handler, logging.LogRecord]] = deque(maxlen=_MAX_HELD)
        self.handler: logging.Handler | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.active and record.levelno < logging.ERROR and self.handler is not None:
            self.held.append((self.handler, record))
            return False
        return True


_HOLDING = _Holding()


def hold() -> None:
    """Start holding the root logger's records below ERROR (no-op at DEBUG, or without a handler)."""
    root = logging.getLogger()
    if root.level <= logging.DEBUG or not root.handlers:
        return
    handler = root.handlers[0]
    if _HOLDING not in handler.filters:
        handler.addFilter(_HOLDING)
    _HOLDING.handler = handler
    _HOLDING.active = True


def release() -> None:
    """Write what was held, in order, and stop holding."""
    if not _HOLDING.active:
        return
    _HOLDING.active = False
    while _HOLDING.held:
        handler, record = _HOLDING.held.popleft()
        handler.handle(record)


def discard() -> None:
    """Drop what was held and stop holding (the start failed and says so on its own)."""
    _HOLDING.active = False
    _HOLDING.held.clear()
