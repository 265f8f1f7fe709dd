"""The API node's table of requests in flight: where their tokens and errors arrive.

Each request has an unbounded in-memory channel (a request produces at most ``max_tokens`` events). A
lost peer fails every request whose plan uses it at once, so a client never waits for a token that
cannot come.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Set
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from exo_core.protocol.control import Error
from exo_core.protocol.inference import Progress, Token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestFailed:
    """The request cannot go on (a node failed or went away)."""

    message: str
    node_id: str = ""


Event = Token | Progress | RequestFailed


@dataclass
class _Entry:
    nodes: frozenset[str]
    send: MemoryObjectSendStream[Event]


class RequestTracker:
    """Routes TOKEN and ERROR messages to the request waiting for them."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, request_id: str, nodes: frozenset[str]) -> MemoryObjectReceiveStream[Event]:
        if request_id in self._entries:
            raise ValueError(f"request {request_id} is already in flight")
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._entries[request_id] = _Entry(nodes, send)
        return receive

    def close(self, request_id: str) -> None:
        entry = self._entries.pop(request_id, None)
        if entry is not None:
            entry.send.close()

    def token(self, msg: Token) -> None:
        self._deliver(msg.ctx.request_id, msg)

    def progress(self, msg: Progress) -> None:
        self._deliver(msg.request_id, msg)

    def error(self, msg: Error, sender: str) -> None:
        self._deliver(msg.request_id, RequestFailed(msg.message or msg.code_name, sender))

    def fail_unreachable(self, reachable: Set[str], leaving: Set[str] = frozenset()) -> None:
        """Fail requests whose plan uses a node no path of connections leads to any more, or one that is
        leaving the cluster (its requests move to a new plan at once instead of being cut when it stops)."""
        for rid, entry in list(self._entries.items()):
            lost = sorted(entry.nodes - reachable)
            if lost:
                message = f"node {lost[0]} of this request's plan went away (no connection leads to it)"
                self._deliver(rid, RequestFailed(message, lost[0]))
                continue
            going = sorted(entry.nodes & leaving)
            if going:
                message = f"node {going[0]} of this request's plan is shutting down"
                self._deliver(rid, RequestFailed(message, going[0]))

    def _deliver(self, request_id: str, event: Event) -> None:
        entry = self._entries.get(request_id)
        if entry is None:
            log.debug("dropping %s for request %s: not in flight here", type(event).__name__, request_id)
            return
        try:
            entry.send.send_nowait(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
