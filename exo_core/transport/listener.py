"""Accepting peers: the listening sockets, and the budget of inbound connections still in the handshake.

:class:`Listener` binds ``host:port`` (one socket per address family), accepts connections and hands each to
the transport's ``serve``. Connections that have not finished the handshake live in a budget of their own
(``max_handshakes``, ``max_handshakes_per_address``), apart from the authenticated peers' slots: a new
connection is always admitted and evicts the oldest waiting one of the address holding the most, which is
told why (``ERROR UNAVAILABLE``) and closed, with a rate-limited log line. So idle or slow sockets can delay
nobody for long, and a ping from an address that also holds idle sockets still gets through.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup

from exo_core.protocol.codec import encode
from exo_core.protocol.control import Error
from exo_core.protocol.errors import ErrorCode
from exo_core.ratelog import RateLimitedLog
from exo_core.transport.admission import HandshakeBudget
from exo_core.transport.connection import Connection
from exo_core.transport.errors import ConnectionClosedError
from exo_core.transport.settings import TransportSettings
from exo_core.transport.sock import format_address, listen, tune

log = logging.getLogger("exo_core.transport")

#: ``serve(conn)``: handshake an accepted connection, then carry its frames until it closes.
Serve = Callable[[Connection], Coroutine[Any, Any, None]]


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port``.

    Raises:
        OSError: naming the address and the flag to change (``--node-port``).
    """
    try:
        return listen(host, port)
    except OSError as exc:
        where = format_address(host or "0.0.0.0", port)
        raise OSError(
            exc.errno,
            f"cannot listen for peers on {where}: {exc.strerror or exc}; "
            "pick another port with --node-port (or stop the other exo node using it)",
        ) from exc


class Listener:
    """Accepts inbound connections into the handshake budget (module docstring).

    Args:
        settings: the budget's sizes and the connections' limits.
        serve: the transport's per-connection routine (started in the transport's task group).
        task_group: the transport's running task group.
    """

    def __init__(
        self, settings: TransportSettings, serve: Serve, task_group: Callable[[], TaskGroup]
    ) -> None:
        self.settings = settings
        self._serve = serve
        self._task_group = task_group
        #: inbound connections still in the handshake
        self.handshaking = HandshakeBudget(settings.max_handshakes, settings.max_handshakes_per_address)
        self._evict_log = RateLimitedLog(10.0, time.monotonic)

    def release(self, conn: Connection) -> None:
        """``conn`` finished (or failed) its handshake: it leaves the budget (no-op if not in it)."""
        self.handshaking.release(conn)

    async def accept_loop(self, lsock: socket.socket) -> None:
        """Accept on ``lsock`` until cancelled."""
        while True:
            await anyio.wait_readable(lsock)
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", exc)
                await anyio.sleep(0.1)
                continue
            host = str(addr[0])
            tune(sock)
            conn = Connection(sock, self.settings, dialed=False, remote=format_address(host, int(addr[1])))
            victim = self.handshaking.admit(conn, host)
            if victim is not None:
                self._evict(victim, conn, host)
            self._task_group().start_soon(self._serve, conn)

    def _evict(self, victim: Connection, newcomer: Connection, host: str) -> None:
        """Close ``victim`` (in the handshake) to make room for ``newcomer``, telling it why."""
        budget = self.handshaking
        why = "too many connections are in the handshake with this node; yours waited longest: retry"
        try:
            victim.send_nowait(encode(Error(ErrorCode.UNAVAILABLE, why)).parts)
        except ConnectionClosedError:
            pass
        victim.fail("closed to make room for a newer connection in the handshake")

        def emit(suppressed: int) -> None:
            log.warning(
                "too many connections in the handshake (%d, at most %d; %d from %s, at most %d each): "
                "closed the oldest waiting one, from %s, to admit %s%s",
                len(budget),
                budget.total,
                budget.count(host),
                host,
                budget.per_address,
                victim.remote,
                newcomer.remote,
                f" ({suppressed} more such closures since the last message)" if suppressed else "",
            )

        self._evict_log(emit)
