"""Dialing peers and keeping them connected: over TCP, or over an SSH link (``ssh -W``).

:class:`Dialer` opens the socket (a TCP connection, or the local end of an ``ssh`` child's stdio), hands it
to the transport's ``serve`` (handshake, then frames until it closes) and waits for the handshake's
outcome. :meth:`Dialer.keep` redials a lost address with capped, jittered exponential backoff until
:meth:`Dialer.forget`; one policy for both kinds of link.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from anyio import CancelScope
from anyio.abc import TaskGroup

from exo_core.protocol.errors import ErrorCode
from exo_core.transport.connection import Connection
from exo_core.transport.errors import ConnectionClosedError, HandshakeError
from exo_core.transport.links import Link, PeerTable
from exo_core.transport.settings import TransportSettings
from exo_core.transport.sock import connect, format_address
from exo_core.transport.ssh.link import SshProcess
from exo_core.transport.ssh.route import SshRoute

log = logging.getLogger("exo_core.transport")

Ready = Callable[[Link | BaseException], None]
#: ``serve(conn, conn_seq, ready)``: handshake ``conn``, call ``ready`` with the link or the failure, then
#: carry frames until the connection closes.
Serve = Callable[[Connection, int, Ready | None], Coroutine[Any, Any, None]]
Key = tuple[str, int, SshRoute | None]


def describe(host: str, port: int, ssh: SshRoute | None) -> str:
    """How an address is written in logs: ``host:port`` or ``ssh://dest/port``."""
    return ssh.url(host, port) if ssh is not None else format_address(host, port)


@dataclass(eq=False)
class _Keep:
    scope: CancelScope
    link: Link | None = None
    #: the node the address last led to
    node_id: str | None = None


class Dialer:
    """Opens connections for the transport and keeps the addresses discovery reported connected.

    Args:
        settings: timeouts, backoff and ``ssh_command``.
        serve: the transport's per-connection routine.
        task_group: the transport's running task group (raises when it is not running).
        table: the peer table (a connection that lost the duplicate rule is redialed only when the peer
            goes down).
    """

    def __init__(
        self, settings: TransportSettings, serve: Serve, task_group: Callable[[], TaskGroup], table: PeerTable
    ) -> None:
        self.settings = settings
        self._serve = serve
        self._task_group = task_group
        self._table = table
        self._conn_seq = 0
        self._keeps: dict[Key, _Keep] = {}

    async def dial(self, host: str, port: int, ssh: SshRoute | None = None) -> Link:
        """Connect once and return the handshaken link (it stays up).

        Raises:
            OSError: refused, unreachable, timed out; for SSH, :class:`SshLinkError` with ssh's diagnosis.
            HandshakeError: the other end refused us or is not a compatible exo node.
        """
        tg = self._task_group()
        self._conn_seq += 1
        seq = self._conn_seq
        result: list[Link | BaseException] = []
        done = anyio.Event()

        def ready(r: Link | BaseException) -> None:
            result.append(r)
            done.set()

        proc: SshProcess | None = None
        if ssh is None:
            sock = await connect(host, port, self.settings.connect_timeout)
            conn = Connection(sock, self.settings, dialed=True, remote=format_address(host, port))
            tg.start_soon(self._serve, conn, seq, ready)
        else:
            s = self.settings
            with CancelScope(shield=True):  # a child started must be owned by its serve task
                started = await SshProcess.start(
                    ssh, host, port, command=s.ssh_command, connect_timeout=s.connect_timeout
                )
            proc = started
            conn = Connection(started.sock, self.settings, dialed=True, remote=started.label)
            tg.start_soon(started.serve, lambda: self._serve(conn, seq, ready), conn.fail)
        try:
            await done.wait()
        except BaseException:  # cancelled (forget, stop): nobody would own the connection
            conn.fail(f"dialing {describe(host, port, ssh)} cancelled")
            raise
        if isinstance(result[0], BaseException):
            raise result[0] if proc is None else await proc.failure(result[0])
        return result[0]

    def keep(self, host: str, port: int, ssh: SshRoute | None = None) -> None:
        """Keep the address connected: dial now, redial with backoff whenever lost, until :meth:`forget`."""
        key = (host, port, ssh)
        if key in self._keeps:
            return
        keep = _Keep(CancelScope())
        self._keeps[key] = keep
        self._task_group().start_soon(self._keep_loop, key, keep)

    def forget(self, host: str, port: int, ssh: SshRoute | None = None) -> None:
        """Stop keeping the address connected and close the connection made for it (no-op if unknown)."""
        keep = self._keeps.pop((host, port, ssh), None)
        if keep is None:
            return
        keep.scope.cancel()
        if keep.link is not None:
            keep.link.conn.fail(f"{describe(host, port, ssh)} forgotten")

    def peer_at(self, host: str, port: int, ssh: SshRoute | None = None) -> str | None:
        """The node id the kept address last led to, if any."""
        keep = self._keeps.get((host, port, ssh))
        return keep.node_id if keep is not None else None

    async def _keep_loop(self, key: Key, keep: _Keep) -> None:
        s = self.settings
        where = describe(*key)
        delay = s.reconnect_initial
        failures = 0
        with keep.scope:
            while True:
                try:
                    link = await self.dial(*key)
                except (OSError, HandshakeError, ConnectionClosedError) as exc:
                    if isinstance(exc, HandshakeError) and exc.code == ErrorCode.SELF_CONNECTION:
                        return  # the address is this node itself
                    failures += 1
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(
                        level,
                        "dialing %s failed (attempt %d, retry in %.3gs): %s",
                        where,
                        failures,
                        delay,
                        exc,
                    )
                else:
                    failures = 0
                    delay = s.reconnect_initial
                    keep.link = link
                    keep.node_id = link.info.node_id
                    await link.done.wait()
                    keep.link = None
                    peer = self._table.peers.get(link.info.node_id)
                    if peer is not None:  # still reachable through the connection that won
                        await peer.gone.wait()
                await anyio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, s.reconnect_max)
