"""Stop strings over a stream of text deltas.

A stop string may arrive split across tokens (``"ST"`` then ``"OP"``), so text that could be the start of
one is held back until the next delta shows whether it is. Tokens (with their logprobs) are released with
the text they produced, so a client never sees a token whose text was cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from exo_core.api.backend import TokenEvent


@dataclass
class Released:
    """What may be sent to the client now.

    Attributes:
        text: the text delta (may be empty).
        tokens: the tokens whose text is now fully sent (or, at a stop, partly before the cut).
    """

    text: str = ""
    tokens: list[TokenEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text or self.tokens)


class StopFilter:
    """Cuts a stream of text deltas at the earliest of some stop strings.

    Args:
        stops: the stop strings (empty strings are ignored).

    Usage: ``feed`` every token; once :attr:`stopped` is true the stream is over (the stop string and
    anything after it are dropped); when the backend finishes first, ``flush`` releases the held text.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""  # produced but not released text
        self._pending_base = 0  # raw offset of _pending[0]
        self._tokens: list[tuple[TokenEvent, int, int]] = []  # unreleased (token, raw start, raw end)
        self.stopped = False
        self.stop_string: str | None = None

    def feed(self, token: TokenEvent) -> Released:
        """Add one token; returns what can be released now."""
        if self.stopped:
            return Released()
        start = self._pending_base + len(self._pending)
        self._pending += token.text
        self._tokens.append((token, start, start + len(token.text)))
        if not self._stops:
            return self._release(len(self._pending))
        cut, which = self._find_stop()
        if which is not None:
            self.stopped = True
            self.stop_string = which
            released = self._release(cut, at_stop=True)
            self._pending = ""
            self._tokens.clear()
            return released
        return self._release(len(self._pending) - self._held_suffix())

    def flush(self) -> Released:
        """Release everything held back (the stream ended without a stop string)."""
        if self.stopped:
            return Released()
        return self._release(len(self._pending))

    def _find_stop(self) -> tuple[int, str | None]:
        best, which = len(self._pending) + 1, None
        for stop in self._stops:
            index = self._pending.find(stop)
            if index != -1 and index < best:
                best, which = index, stop
        return best, which

    def _held_suffix(self) -> int:
        """Length of the longest tail of the pending text that starts some stop string."""
        for k in range(min(self._max_hold, len(self._pending)), 0, -1):
            tail = self._pending[-k:]
            if any(stop.startswith(tail) for stop in self._stops):
                return k
        return 0

    def _release(self, upto: int, *, at_stop: bool = False) -> Released:
        """Release ``_pending[:upto]`` and the tokens it completes (at a stop: that it touches)."""
        text = self._pending[:upto]
        end = self._pending_base + upto
        out = Released(text=text)
        keep: list[tuple[TokenEvent, int, int]] = []
        for entry in self._tokens:
            token, t_start, t_end = entry
            if t_end <= end or (at_stop and t_start < end):
                out.tokens.append(token)
            else:
                keep.append(entry)
        self._tokens = keep
        self._pending = self._pending[upto:]
        self._pending_base = end
        return out
