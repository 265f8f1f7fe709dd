"""``exo ping HOST:PORT`` (or ``ssh://[user@]host[:sshport]/PORT``): connect, handshake (with the cluster
key if set), PING, and diagnose failures (for an SSH link, with ssh's own one-line diagnosis).

:func:`ping` does the work and raises :class:`PingError` with a one-line diagnosis; :func:`format_ping`
renders a result; :func:`run_ping_cli` is what the ``exo ping`` command calls.
"""

from __future__ import annotations

import errno
import logging
import secrets
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio

from exo_core import __version__
from exo_core.protocol.binary import Value
from exo_core.protocol.codec import decode, encode
from exo_core.protocol.control import Ping, Pong
from exo_core.protocol.envelope import Envelope
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.header import FrameType
from exo_core.transport.connection import Connection
from exo_core.transport.errors import ConnectionClosedError, HandshakeError
from exo_core.transport.handshake import LocalIdentity, handshake
from exo_core.transport.settings import TransportSettings
from exo_core.transport.sock import connect, format_address, parse_address
from exo_core.transport.ssh.link import SshLinkError, SshProcess
from exo_core.transport.ssh.route import SshRoute, is_ssh_url, parse_ssh_url

if TYPE_CHECKING:
    from exo_core.settings import CoreSettings

PingFailure = Literal[
    "refused", "timeout", "not_exo", "version_mismatch", "auth", "unreachable", "unavailable", "closed", "ssh"
]


class PingError(Exception):
    """``exo ping`` failed; ``kind`` classifies it and the message is the one-line diagnosis."""

    def __init__(self, kind: PingFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class PingResult:
    """What ``exo ping`` learned.

    Attributes:
        address: the ``host:port`` pinged.
        node_id / version / agent / capabilities / advertised_address: from the peer's HELLO.
        connect_ms: TCP connect time.
        handshake_ms: HELLO (and authentication) time.
        rtts_ms: round-trip time of each PING.
    """

    address: str
    node_id: str
    version: int
    agent: str
    advertised_address: str
    connect_ms: float
    handshake_ms: float
    rtts_ms: list[float]
    capabilities: dict[str, Value] = field(default_factory=dict)
    authenticated: bool = False


async def ping(
    host: str,
    port: int,
    *,
    cluster_key: str | bytes | None = None,
    count: int = 3,
    timeout: float = 5.0,  # noqa: ASYNC109 - each step (connect, handshake, each PING) gets this budget
    ssh: SshRoute | None = None,
    ssh_command: str | None = None,
) -> PingResult:
    """Connect to an exo node (through an SSH link when ``ssh`` is given), handshake, and send ``count``
    PINGs.

    Raises:
        PingError: with ``kind`` refused, timeout, not_exo, version_mismatch, auth, unreachable,
            unavailable (the node turned us away and said why: it is at its connection limit, ...), closed,
            or ssh (the SSH link failed; the message is ssh's diagnosis).
    """
    if ssh is not None:
        return await _ping_over_ssh(ssh, host, port, cluster_key, count, timeout, ssh_command)
    where = format_address(host, port)
    t0 = time.perf_counter()
    try:
        sock = await connect(host, port, timeout)
    except ConnectionRefusedError:
        raise PingError(
            "refused", f"{where}: connection refused: is the tunnel up? is the node running?"
        ) from None
    except TimeoutError:
        raise PingError(
            "timeout", f"{where}: timed out connecting after {timeout:g}s: host unreachable or port filtered"
        ) from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
        raise PingError("unreachable", f"{where}: cannot connect: {reason}") from None
    t1 = time.perf_counter()
    try:
        return await _over(sock, where, cluster_key, count, timeout, t0, t1)
    finally:
        sock.close()


async def _ping_over_ssh(
    route: SshRoute,
    host: str,
    port: int,
    cluster_key: str | bytes | None,
    count: int,
    timeout: float,  # noqa: ASYNC109
    command: str | None,
) -> PingResult:
    t0 = time.perf_counter()
    try:
        proc = await SshProcess.start(route, host, port, command=command, connect_timeout=timeout)
    except SshLinkError as exc:
        raise PingError("ssh", str(exc)) from None
    result: list[PingResult | PingError] = []

    async def run() -> None:
        # the SSH session is set up while the handshake waits: count it in the handshake's time
        try:
            result.append(await _over(proc.sock, proc.label, cluster_key, count, timeout * 3, t0, t0))
        except PingError as exc:
            result.append(exc)

    failed: list[str] = []
    await proc.serve(run, failed.append)
    outcome = result[0] if result else None
    if isinstance(outcome, PingResult):
        return outcome
    why = proc.diagnosis() if proc.process.returncode not in (None, 0) else None
    if why:
        raise PingError("ssh", f"{proc.label}: {why}")
    if outcome is not None:
        raise outcome
    raise PingError("ssh", f"{proc.label}: {failed[0] if failed else 'ssh exited'}")


async def _over(
    sock: socket.socket,
    where: str,
    cluster_key: str | bytes | None,
    count: int,
    timeout: float,  # noqa: ASYNC109
    t0: float,
    t1: float,
) -> PingResult:
    """Handshake and PING over a connected socket."""
    settings = TransportSettings(connect_timeout=timeout, handshake_timeout=timeout, idle_timeout=timeout + 5)
    key = cluster_key.encode("utf-8") if isinstance(cluster_key, str) else cluster_key
    conn = Connection(sock, settings, dialed=True, remote=where)
    me = LocalIdentity(
        node_id=f"exo-ping-{secrets.token_hex(4)}",
        address="",
        agent=f"exo-core {__version__} (exo ping)",
        instance=secrets.randbits(63),
        capabilities={},
        key=key,
        tool=True,
    )
    failure: PingError | None = None
    async with anyio.create_task_group() as tg:
        conn.scope = tg.cancel_scope
        tg.start_soon(conn.write_loop)
        try:
            info = await handshake(conn, me, conn_seq=1, within=timeout)
            t2 = time.perf_counter()
            rtts = [await _one_ping(conn, i + 1, timeout) for i in range(count)]
        except HandshakeError as exc:
            failure = _diagnose(where, exc)
        except ConnectionClosedError:
            failure = PingError(
                "closed",
                f"{where}: the peer closed the connection during the handshake (not an exo node?)",
            )
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return PingResult(
        where,
        info.node_id,
        info.version,
        info.agent,
        info.address,
        (t1 - t0) * 1e3,
        (t2 - t1) * 1e3,
        rtts,
        info.capabilities,
        key is not None,
    )


def _diagnose(where: str, exc: HandshakeError) -> PingError:
    if exc.code == ErrorCode.BAD_MAGIC:
        return PingError(
            "not_exo", f"{where}: not an exo node (it answered with something other than exo frames)"
        )
    if exc.code == ErrorCode.VERSION_MISMATCH:
        return PingError("version_mismatch", f"{where}: protocol version mismatch: {exc}")
    if exc.code in (ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REQUIRED):
        return PingError(
            "auth", f"{where}: authentication failed: {exc} (check --cluster-key / EXO_CLUSTER_KEY)"
        )
    if exc.code == ErrorCode.TIMEOUT:
        return PingError("timeout", f"{where}: no exo handshake: {exc}")
    if exc.code == ErrorCode.UNAVAILABLE and exc.from_peer:
        return PingError("unavailable", f"{where}: the node turned us away: {exc}")
    return PingError("closed", f"{where}: handshake failed: {exc}")


async def _one_ping(conn: Connection, corr: int, limit: float) -> float:
    start = time.perf_counter()
    conn.send_nowait(encode(Ping(corr), Envelope(corr=corr, wants_reply=True)).parts)
    try:
        with anyio.fail_after(limit):
            while True:
                frame = await conn.read_frame()
                if frame.type not in (FrameType.PONG, FrameType.ERROR):
                    continue  # keepalives and the like
                env, msg = decode(frame.type, frame.payload)
                if isinstance(msg, Pong) and env is not None and env.corr == corr:
                    return (time.perf_counter() - start) * 1e3
                if frame.type == FrameType.ERROR:
                    raise HandshakeError(ErrorCode.UNEXPECTED, f"peer answered PING with ERROR: {msg}")
    except TimeoutError:
        raise HandshakeError(ErrorCode.TIMEOUT, f"no PONG within {limit:g}s") from None
    except ProtocolError as exc:
        raise HandshakeError(exc.code, f"bad frame after the handshake: {exc}") from None


def format_ping(result: PingResult) -> str:
    """Human-readable report of a successful ping."""
    lines = [
        f"exo node {result.node_id} at {result.address}",
        f"  protocol version {result.version}, {result.agent or 'unknown agent'}"
        + (", authenticated" if result.authenticated else ""),
        f"  advertised address: {result.advertised_address or '(none)'}",
        f"  capabilities: {result.capabilities or '(none)'}",
        f"  connect {result.connect_ms:.2f} ms, handshake {result.handshake_ms:.2f} ms",
    ]
    for i, rtt in enumerate(result.rtts_ms, 1):
        lines.append(f"  PING {i}: {rtt:.3f} ms")
    if result.rtts_ms:
        lines.append(
            f"  rtt min/median/max = {min(result.rtts_ms):.3f}/{statistics.median(result.rtts_ms):.3f}/"
            f"{max(result.rtts_ms):.3f} ms"
        )
    return "\n".join(lines)


def run_ping_cli(
    target: str,
    *,
    core: CoreSettings,
    count: int = 3,
    timeout: float = 5.0,
    ssh_command: str | None = None,
) -> int:
    """``exo ping HOST:PORT`` or ``exo ping ssh://...``: print the result (stdout) or a one-line diagnosis
    (stderr).

    Returns:
        the exit code: 0 on success, 1 when the ping failed, 2 for a bad address.
    """
    route: SshRoute | None = None
    try:
        if is_ssh_url(target):
            route, host, port = parse_ssh_url(target.strip())
        else:
            host, port = parse_address(target)
    except ValueError as exc:
        print(f"exo ping: {exc}", file=sys.stderr)
        return 2
    key = core.cluster_key_text()
    logging.getLogger("exo_core.transport").setLevel(logging.ERROR)  # the diagnosis below says it all
    try:
        result = anyio.run(
            lambda: ping(
                host, port, cluster_key=key, count=count, timeout=timeout, ssh=route, ssh_command=ssh_command
            )
        )
    except PingError as exc:
        print(f"exo ping: {exc}", file=sys.stderr)
        return 1
    print(format_ping(result))
    return 0
