"""Connection-level limits of the HTTP server: a header timeout and a connection cap.

uvicorn bounds an idle keep-alive connection (5 s) but not a connection that never sends its request line,
nor one that sends its headers a byte at a time (each byte re-arms nothing: the keep-alive timer is only
armed after a response). Left alone, 1,000 half-sent requests keep 1,000 file descriptors open for as long as
their clients like. :func:`guarded_protocol` builds uvicorn's h11 protocol with two rules added:

- **Header timeout**: from the moment a connection opens, or its previous response ends, the client has
  ``header_timeout`` seconds to send complete request headers; data arriving does not extend it. Past it the
  connection is closed (with a ``408`` when part of a request had arrived). The body is bounded separately,
  by the route that reads it (:func:`exo_core.api.parsing.read_json_object`).
- **Connection cap**: at most ``max_connections`` open connections. A new connection beyond the cap evicts
  the oldest connection that has waited at least :data:`EVICT_AFTER` seconds for its headers (an idle or
  stalled client, which is what a flood is made of); when there is none, the new one gets ``503`` with
  ``Retry-After`` and is closed. Either way, one rate-limited log line says so. The grace matters in a burst:
  the loop accepts up to a hundred connections before it reads any of them, so a connection that sent its
  whole request a moment ago can still look idle; evicting it would reset a legitimate client (seen once
  in 1,000 half-sent requests against a chat probe), where a 503 tells it to retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from exo_core.ratelog import RateLimitedLog

log = logging.getLogger("exo_core.api")

#: Seconds a connection must have waited for its request headers before a new one may evict it.
EVICT_AFTER = 1.0

_BUSY = (
    b'{"error":{"message":"the node has too many open HTTP connections; retry shortly",'
    b'"type":"server_error","param":null,"code":"too_many_connections"}}'
)
_REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds of the HTTP server's connections.

    Attributes:
        header_timeout: seconds a connection gets to send complete request headers, counted from when it
            opens or its previous response ended.
        max_connections: most connections open at once (see the module docstring for who gives way).
    """

    header_timeout: float = 10.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        if not self.header_timeout > 0:
            raise ValueError(f"header_timeout must be > 0, got {self.header_timeout}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``limits`` applied (pass it as ``uvicorn.Config(http=...)``)."""
    evictions = RateLimitedLog(10.0, time.monotonic)
    timeouts = RateLimitedLog(10.0, time.monotonic)

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        #: monotonic time since when the connection waits for request headers (None: inside a request)
        _waiting_since: float | None = None
        _partial = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections and not self._evict_one():
                evictions.warning(
                    log,
                    "HTTP connection from %s refused: %d connections open, all busy (cap %d)",
                    _peer(self.client),
                    len(self.connections) - 1,
                    limits.max_connections,
                )
                self.connections.discard(self)
                transport.write(_REFUSED_RESPONSE)
                transport.close()
                return
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            if self._waiting_since is not None:
                self._partial = True
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            # headers complete (or the connection failed); not the leftover body of an answered request
            in_request = self.cycle is not None and not self.cycle.response_complete
            if self.conn.their_state is not h11.IDLE and in_request:
                self._stop_waiting()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._await_headers()  # before super(): it may parse a pipelined request at once
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            self._stop_waiting()
            self._waiting_since = time.monotonic()
            self._partial = False
            self._header_timer = self.loop.call_later(limits.header_timeout, self._headers_timed_out)

        def _stop_waiting(self) -> None:
            self._waiting_since = None
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._partial:
                timeouts.warning(
                    log,
                    "HTTP connection from %s closed: request headers not complete within %g s",
                    _peer(self.client),
                    limits.header_timeout,
                )
                self.transport.write(_TIMEOUT_RESPONSE)
            self._waiting_since = None
            self.transport.close()

        def _evict_one(self) -> bool:
            oldest: GuardedH11Protocol | None = None
            waited_since = time.monotonic() - EVICT_AFTER
            for other in self.connections:
                if (
                    isinstance(other, GuardedH11Protocol)
                    and other is not self
                    and other._waiting_since is not None
                    and other._waiting_since <= waited_since
                    and not other.transport.is_closing()
                    and (oldest is None or other._waiting_since < oldest._waiting_since)  # type: ignore[operator]
                ):
                    oldest = other
            if oldest is None:
                return False
            evictions.warning(
                log,
                "HTTP connection cap (%d) reached: closed the oldest connection waiting for its request "
                "(from %s, idle %.1f s)",
                limits.max_connections,
                _peer(oldest.client),
                time.monotonic() - (oldest._waiting_since or 0.0),
            )
            oldest._stop_waiting()
            oldest.connections.discard(oldest)
            oldest.transport.close()
            return True

    return GuardedH11Protocol


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"
