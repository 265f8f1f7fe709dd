"""Admission: connections in the handshake have their own small budget; a refused dial is told why."""

from __future__ import annotations

import logging
import socket
import sys
import textwrap

import anyio
import pytest

from exo_core.ratelog import RateLimitedLog
from exo_core.settings import CoreSettings
from exo_core.transport.admission import HandshakeBudget
from exo_core.transport.connection import Connection
from exo_core.transport.ping import PingError, ping, run_ping_cli
from exo_core.transport.settings import TransportSettings

from .conftest import accepted_sockets, make, running, wait_until

#: opens N idle connections to a port, says "ready", and keeps them open until stdin closes (or 60 s)
IDLE_CONNECTIONS = textwrap.dedent(
    """
    import socket, sys, select
    port, n = int(sys.argv[1]), int(sys.argv[2])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
    print("ready", flush=True)
    select.select([sys.stdin], [], [], 60)
    """
)


async def test_700_idle_connections_do_not_lock_out_pings(caplog: pytest.LogCaptureFixture) -> None:
    """700 idle connections from the pinger's own address (the authenticated cap is 512): all 10 pings
    succeed, the node's descriptors stay within its budgets, and the closures are logged rate-limited."""
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b = make("b", key="k3y", handshake_timeout=10.0)
    async with running(b):
        attacker = await anyio.open_process([sys.executable, "-c", IDLE_CONNECTIONS, str(b.port), "700"])
        async with attacker:
            try:
                assert attacker.stdout is not None
                with anyio.fail_after(30):
                    assert (await attacker.stdout.receive()).strip() == b"ready"
                share = b.settings.max_handshakes_per_address
                budget = b._listener.handshaking
                await wait_until(lambda: budget.count("127.0.0.1") == share, what="a full share")
                # what the node holds of the 700: its share for one source address, the rest closed
                await wait_until(lambda: accepted_sockets(b.port) == share, what="closures to settle")
                results = []
                for _ in range(10):
                    results.append(await ping("127.0.0.1", b.port, cluster_key="k3y", count=1, timeout=3))
                assert [r.node_id for r in results] == ["b"] * 10
                assert attacker.returncode is None  # the attacker's 700 sockets were open all along
            finally:
                assert attacker.stdin is not None
                await attacker.stdin.aclose()
                with anyio.fail_after(10):
                    await attacker.wait()
        closures = [r for r in caplog.records if "too many connections in the handshake" in r.getMessage()]
        assert 1 <= len(closures) <= 3, [r.getMessage() for r in closures]  # 700 closures, few lines
        assert b.peers == {}


async def test_refused_dial_is_told_why(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """At its connection limit a node answers ERROR UNAVAILABLE instead of READY, and `exo ping` prints
    that reason rather than "not an exo node?"; the slot is free again once the peer leaves."""
    caplog.set_level(logging.WARNING, "exo_core.transport")
    b, a = make("b", max_connections=1), make("a")
    async with running(b, a):
        await a.dial("127.0.0.1", b.port)
        with pytest.raises(PingError, match="maximum of 1 connections") as e:
            await ping("127.0.0.1", b.port, count=1, timeout=2)
        assert e.value.kind == "unavailable" and "not an exo node" not in str(e.value)
        code = await anyio.to_thread.run_sync(
            lambda: run_ping_cli(f"127.0.0.1:{b.port}", core=CoreSettings(), count=1, timeout=2)
        )
        assert code == 1
        err = capsys.readouterr().err
        assert "turned us away" in err and "UNAVAILABLE" in err and "--transport-max-connections" in err
        assert any(
            "rejected connection" in r.getMessage() and "maximum of 1 connections" in r.getMessage()
            for r in caplog.records
        )
    async with running(b):
        assert (await ping("127.0.0.1", b.port, count=1, timeout=2)).node_id == "b"


def _conns(n: int) -> tuple[list[Connection], list[socket.socket]]:
    settings = TransportSettings()
    conns, socks = [], []
    for i in range(n):
        x, y = socket.socketpair()
        socks += [x, y]
        conns.append(Connection(x, settings, dialed=False, remote=f"c{i}"))
    return conns, socks


async def test_budget_evicts_the_oldest_of_the_biggest_holder() -> None:
    conns, socks = _conns(8)
    try:
        budget = HandshakeBudget(total=4, per_address=2)
        assert budget.admit(conns[0], "a") is None and budget.admit(conns[1], "a") is None
        conns[0].bytes_in = 10  # a handshake in progress: an idle socket gives way first
        assert budget.admit(conns[2], "a") is conns[1]  # over the per-address share: a's own oldest idle
        assert budget.admit(conns[3], "b") is None and budget.admit(conns[4], "c") is None
        assert len(budget) == 4 and budget.count("a") == 2
        # full: the biggest holder (a) gives way, its oldest idle one (conns[2]), not b's or c's
        assert budget.admit(conns[5], "d") is conns[2]
        assert budget.admit(conns[6], "e") in (conns[3], conns[4], conns[5], conns[0])
        budget.release(conns[6])
        budget.release(conns[6])  # idempotent
        assert len(budget) == 3
    finally:
        for s in socks:
            s.close()


def test_rate_limited_log_counts_what_it_swallowed() -> None:
    now = [0.0]
    lines: list[int] = []
    limited = RateLimitedLog(10.0, lambda: now[0])
    for t in (0.0, 1.0, 2.0, 9.9, 10.0, 10.5, 25.0):
        now[0] = t
        limited(lines.append)
    assert lines == [0, 3, 1]
