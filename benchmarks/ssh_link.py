"""SSH link benchmark: exo frames over an ``ssh -W`` child's stdio vs over an ``ssh -N -L`` tunnel.

Both paths go through the same real sshd (``exo_core.transport.ssh.testing.running_sshd``: a private sshd on
a free 127.0.0.1 port, generated keys) with the same ssh options, so the same cipher; everything stays on
127.0.0.1. Prints ONE JSON object:

``tunnel_rtt_us_p50``, ``tunnel_rtt_us_p99``, ``ssh_link_rtt_us_p50``, ``ssh_link_rtt_us_p99``, ``rtt_ratio``
(ssh link p50 / tunnel p50), ``tunnel_throughput_MBps``, ``ssh_link_throughput_MBps``, ``throughput_ratio``
(ssh link / tunnel), ``rtt_target_met`` (ratio <= 1.2) and ``throughput_target_met`` (ratio >= 0.8); as
context the same throughputs in the other direction (``*_reverse_throughput_MBps``,
``reverse_throughput_ratio``), ``direct_tcp_*`` (the same transports over plain loopback TCP, no ssh),
``rtt_over_20ms`` (timed requests slower than 20 ms, per method), ``cpu_ms_per_transfer`` and
``cpu_ms_per_reverse_transfer`` (see below), ``runs``, ``rtt_n``, ``payload_bytes``, ``big_tensor_bytes``,
``ssh_version``, ``ssh_cipher`` (what ssh negotiates with this sshd).

Setup: one receiver transport ``rx`` listening on 127.0.0.1, on its own event loop in its own thread, and
one dialing transport per method (``tx-direct``, ``tx-tunnel``, ``tx-ssh_link``) on a second event loop in a
second thread, so the two ends are separate nodes that never share a loop. The dialers reach ``rx`` by:

* ``direct``: ``dial("127.0.0.1", RXPORT)``;
* ``tunnel``: ``ssh -N -L 127.0.0.1:LPORT:127.0.0.1:RXPORT root@127.0.0.1``, then
  ``dial("127.0.0.1", LPORT)``;
* ``ssh_link``: ``dial("127.0.0.1", RXPORT, ssh=SshRoute("root@127.0.0.1"))``, i.e. exo runs
  ``ssh -W 127.0.0.1:RXPORT root@127.0.0.1`` and speaks frames over a Unix socket pair with its stdio.

RTT: a request from the dialer carrying the hidden state of one token of the default model (576 float32 =
2,304 bytes) in a TENSOR message, echoed back by ``rx``'s handler, timed in the dialer's loop; ``--rtt-n``
timed requests per method (after ``rtt_n / 10`` untimed ones), in blocks of ``--rtt-block``, the methods
taking turns block by block (the order rotating every round) so all see the same machine load; p50 and p99.

Throughput: one 64 MiB float32 tensor sent one-way, from handing it to the sender until the receiver's
handler has it (delivered into the fresh buffer the parser allocates per message), best of ``--runs`` after
one untimed transfer per method, the methods taking turns transfer by transfer (order rotating every
round). Forward: dialer -> ``rx`` (the link's ssh child reads the socket pair); reverse: ``rx`` -> dialer
(the dialer's transport reads the socket pair); all forward transfers come first, then all reverse ones.

``cpu_ms_per_*transfer``: CPU time per timed 64 MiB transfer (mean over the runs), split into ``exo`` (this
process: both event loops), ``ssh`` (the method's ssh client: the ``-L`` one or the ``-W`` child) and
``sshd`` (the sshd process serving that method's SSH connection); from ``/proc``, 1/CLK_TCK resolution.

The run is bounded: every request and transfer has a timeout and the whole run ``--time-limit`` seconds;
sshd, the tunnel, the ssh child and the transports are stopped on exit, error or not. Needs root and
OpenSSH (client and server), like ``running_sshd``.
Usage: ``python benchmarks/ssh_link.py [--rtt-n 2000] [--rtt-block 100] [--runs 7] [--time-limit 170]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from anyio.from_thread import BlockingPortal, start_blocking_portal

from exo_core.nodeproc import find_free_ports
from exo_core.protocol import FrameType, RequestContext, Stage, Tensor, TensorMessage
from exo_core.transport.settings import TransportSettings
from exo_core.transport.ssh.route import SshRoute
from exo_core.transport.ssh.testing import Sshd, running_sshd
from exo_core.transport.tcp import TcpTransport
from exo_core.transport.types import Handler, Incoming

HIDDEN = np.random.default_rng(0).standard_normal((1, 576), dtype=np.float32)  # 2,304 bytes
CTX = RequestContext("bench", "a", "smollm2-135m", (Stage("a", 0, 14), Stage("b", 15, 29)))
BIG_BYTES = 64 * 1024 * 1024
LOOPBACK = "127.0.0.1"
METHODS = ("direct", "tunnel", "ssh_link")
RX_ID = "rx"
REQUEST_TIMEOUT = 5.0
TRANSFER_TIMEOUT = 60.0
_TICK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---- /proc accounting --------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (``[0]`` is the state), or ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                out.add(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [pid], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def wait_for(find: Callable[[], T], what: str, within: float = 10.0) -> T:
    """Poll ``find()`` until it returns something truthy (``RuntimeError`` after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        found = find()
        if found:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not found within {within} s")
        time.sleep(0.02)


# ---- ssh facts ---------------------------------------------------------------------------------------------


def ssh_version() -> str:
    out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip()


def ssh_cipher(sshd: Sshd) -> str:
    """The cipher ssh negotiates with this sshd (the same options serve the tunnel and the link)."""
    out = subprocess.run(
        [*sshd.ssh_base(), "-v", f"root@{LOOPBACK}", "true"], capture_output=True, text=True, timeout=30
    )
    m = re.search(r"kex: client->server cipher: (\S+) MAC: (\S+)", out.stderr)
    return f"{m[1]} (MAC {m[2]})" if m else "unknown"


# ---- the bench ---------------------------------------------------------------------------------------------


class Bench:
    """Receiver ``rx`` on one event loop/thread, the three senders on another, sshd and the -L tunnel."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __enter__(self) -> Bench:
        self._stack = contextlib.ExitStack()
        try:
            self._setup()
        except BaseException as exc:
            # the exception reaches the portals' context managers: they cancel what still runs
            if not self._stack.__exit__(type(exc), exc, exc.__traceback__):
                raise
        return self

    def _setup(self) -> None:
        stack = self._stack
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="exo-ssh-bench-")))
        self.sshd = stack.enter_context(running_sshd(workdir / "sshd"))
        self.cipher = ssh_cipher(self.sshd)
        pidfile = self.sshd.workdir / "sshd.pid"  # running_sshd's PidFile
        sshd_pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "sshd's pid file"))

        self._rx = stack.enter_context(start_blocking_portal())
        self._tx = stack.enter_context(start_blocking_portal())
        self._running: list[Future[Any]] = []
        # the transports stop before their portals' loops (the stack unwinds in reverse)
        stack.callback(self._stop_transports)

        self.rx = TcpTransport(RX_ID, host=LOOPBACK, port=0, settings=TransportSettings(idle_timeout=60))
        self._got = threading.Semaphore(0)
        self._got_from: list[str] = []

        def on_tensor(me: str) -> Handler:
            async def handle(incoming: Incoming) -> TensorMessage | None:
                msg = incoming.message
                assert isinstance(msg, TensorMessage)
                if msg.tensor.nbytes == BIG_BYTES:
                    self._got_from.append(f"{incoming.peer.node_id}>{me}")
                    self._got.release()
                    return None
                return msg  # an RTT request: echo it

            return handle

        self.rx.on(FrameType.TENSOR, on_tensor(RX_ID))
        self._running.append(self._rx.start_task(self.rx.run)[0])

        # the -L tunnel: its ssh client, and the sshd processes that appear for its connection
        before = children(sshd_pid)
        (local_port,) = find_free_ports(1)
        tunnel = stack.enter_context(self.sshd.forward(local_port, LOOPBACK, self.rx.port))
        tunnel_sshd = wait_for(lambda: children(sshd_pid) - before, "the tunnel's sshd process")

        ssh_command = " ".join(shlex.quote(a) for a in self.sshd.ssh_base())
        settings = TransportSettings(idle_timeout=60, ssh_command=ssh_command)
        self.tx: dict[str, TcpTransport] = {
            m: TcpTransport(f"tx-{m}", host=LOOPBACK, port=0, settings=settings) for m in METHODS
        }
        for t in self.tx.values():
            t.on(FrameType.TENSOR, on_tensor(t.node_id))  # the reverse transfers
            self._running.append(self._tx.start_task(t.run)[0])
        self.peer: dict[str, str] = {}
        self.peer["direct"] = self._tx.call(self._dial, "direct", LOOPBACK, self.rx.port, None)
        self.peer["tunnel"] = self._tx.call(self._dial, "tunnel", LOOPBACK, local_port, None)
        before = children(sshd_pid)
        route = SshRoute(f"root@{LOOPBACK}", None)  # the port is in ssh_command (-p)
        self.peer["ssh_link"] = self._tx.call(self._dial, "ssh_link", LOOPBACK, self.rx.port, route)
        link_sshd = wait_for(lambda: children(sshd_pid) - before, "the SSH link's sshd process")
        link_ssh = wait_for(
            lambda: [p for p in children(os.getpid()) if "-W" in cmdline(p) and cmdline(p)[0] == "ssh"],
            "the SSH link's ssh child",
        )
        if len(link_ssh) != 1 or len(link_sshd) != 1 or len(tunnel_sshd) != 1:
            raise RuntimeError(f"unexpected ssh processes: {link_ssh}, {link_sshd}, {tunnel_sshd}")
        self.procs: dict[str, dict[str, list[int]]] = {
            "direct": {"ssh": [], "sshd": []},
            "tunnel": {"ssh": [tunnel.pid], "sshd": descendants(next(iter(tunnel_sshd)))},
            "ssh_link": {"ssh": link_ssh, "sshd": descendants(next(iter(link_sshd)))},
        }

        self._rtt_msg = TensorMessage(CTX, 0, 0, Tensor.from_numpy(HIDDEN))
        self._big_msg = TensorMessage(CTX, 0, 0, Tensor.from_numpy(np.ones(BIG_BYTES // 4, dtype=np.float32)))

    async def _dial(self, method: str, host: str, port: int, ssh: SshRoute | None) -> str:
        info = await self.tx[method].dial(host, port, ssh=ssh)
        if info.node_id != RX_ID:
            raise RuntimeError(f"{method}: dialed {info.node_id!r}, expected {RX_ID!r}")
        return info.node_id

    def _stop_transports(self) -> None:
        """Cancel the transports; their portals then wait for them to finish (the ssh -W child is stopped
        and reaped as its link closes)."""
        for f in reversed(self._running):
            f.cancel()

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError("the benchmark ran past --time-limit")

    # ---- RTT ---------------------------------------------------------------------------------------------

    async def _rtt_block(self, method: str, n: int) -> list[float]:
        t, peer, msg = self.tx[method], self.peer[method], self._rtt_msg
        out: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            reply = await t.request(peer, msg, timeout=REQUEST_TIMEOUT)
            out.append((time.perf_counter() - t0) * 1e6)
        assert isinstance(reply, TensorMessage) and reply.tensor.nbytes == HIDDEN.nbytes
        return out

    def rtt(self, n: int, block: int) -> dict[str, list[float]]:
        """``n`` timed round trips per method, in blocks that take turns (after ``n / 10`` untimed ones)."""
        portal: BlockingPortal = self._tx
        for m in METHODS:
            portal.call(self._rtt_block, m, max(1, n // 10))
        out: dict[str, list[float]] = {m: [] for m in METHODS}
        rnd = 0
        while len(out[METHODS[0]]) < n:
            self._check_time()
            k = min(block, n - len(out[METHODS[0]]))
            for m in METHODS[rnd % 3 :] + METHODS[: rnd % 3]:
                out[m] += portal.call(self._rtt_block, m, k)
            rnd += 1
        return out

    # ---- throughput --------------------------------------------------------------------------------------

    def transfer(self, method: str, reverse: bool = False) -> tuple[float, dict[str, float]]:
        """Seconds from handing the 64 MiB tensor to its sender until the receiver's handler has it, and the
        CPU seconds (exo, ssh, sshd) spent meanwhile. Forward: the dialer sends to ``rx``; reverse: ``rx``
        sends to the dialer (over the SSH link, that is what the ssh child's socket pair receives)."""
        procs = self.procs[method]
        cpu0 = (time.process_time(), cpu_seconds(procs["ssh"]), cpu_seconds(procs["sshd"]))
        t0 = time.perf_counter()
        if reverse:
            self._rx.call(self.rx.send, f"tx-{method}", self._big_msg)
        else:
            self._tx.call(self.tx[method].send, self.peer[method], self._big_msg)
        if not self._got.acquire(timeout=TRANSFER_TIMEOUT):
            raise RuntimeError(f"{method}: 64 MiB tensor not received within {TRANSFER_TIMEOUT} s")
        elapsed = time.perf_counter() - t0
        cpu1 = (time.process_time(), cpu_seconds(procs["ssh"]), cpu_seconds(procs["sshd"]))
        route = self._got_from.pop()
        want = f"rx>tx-{method}" if reverse else f"tx-{method}>rx"
        if route != want:
            raise RuntimeError(f"{method}: expected the tensor {want}, got it {route}")
        return elapsed, {k: b - a for k, a, b in zip(("exo", "ssh", "sshd"), cpu0, cpu1, strict=True)}

    def throughput(self, runs: int, reverse: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Best MB/s per method and mean CPU ms per timed transfer, the methods taking turns."""
        for m in METHODS:
            self.transfer(m, reverse)
        best = {m: float("inf") for m in METHODS}
        cpu: dict[str, dict[str, float]] = {m: {"exo": 0.0, "ssh": 0.0, "sshd": 0.0} for m in METHODS}
        for rnd in range(runs):
            for m in METHODS[rnd % 3 :] + METHODS[: rnd % 3]:
                self._check_time()
                elapsed, used = self.transfer(m, reverse)
                best[m] = min(best[m], elapsed)
                for k, v in used.items():
                    cpu[m][k] += v
        mbps = {m: BIG_BYTES / best[m] / 1e6 for m in METHODS}
        per = {m: {k: round(v / runs * 1e3, 1) for k, v in c.items()} for m, c in cpu.items()}
        return mbps, per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-n", type=int, default=2000, help="timed requests per method")
    parser.add_argument("--rtt-block", type=int, default=100, help="requests per method before switching")
    parser.add_argument("--runs", type=int, default=7, help="timed 64 MiB transfers per method")
    parser.add_argument("--time-limit", type=float, default=170.0, help="seconds the whole run may take")
    args = parser.parse_args()
    if args.rtt_n < 1 or args.rtt_block < 1 or args.runs < 1:
        parser.error("--rtt-n, --rtt-block and --runs must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    deadline = time.monotonic() + args.time_limit
    with Bench(deadline) as bench:
        rtt = bench.rtt(args.rtt_n, args.rtt_block)
        mbps, cpu = bench.throughput(args.runs, reverse=False)
        rev_mbps, rev_cpu = bench.throughput(args.runs, reverse=True)
        cipher = bench.cipher
    p50 = {m: statistics.median(v) for m, v in rtt.items()}
    rtt_ratio = p50["ssh_link"] / p50["tunnel"]
    tp_ratio = mbps["ssh_link"] / mbps["tunnel"]
    result: dict[str, Any] = {}
    for m in ("tunnel", "ssh_link"):
        result[f"{m}_rtt_us_p50"] = round(p50[m], 1)
        result[f"{m}_rtt_us_p99"] = round(pct(rtt[m], 99), 1)
    result["rtt_ratio"] = round(rtt_ratio, 3)
    result["tunnel_throughput_MBps"] = round(mbps["tunnel"], 1)
    result["ssh_link_throughput_MBps"] = round(mbps["ssh_link"], 1)
    result["throughput_ratio"] = round(tp_ratio, 3)
    result["rtt_target_met"] = rtt_ratio <= 1.2
    result["throughput_target_met"] = tp_ratio >= 0.8
    result["tunnel_reverse_throughput_MBps"] = round(rev_mbps["tunnel"], 1)
    result["ssh_link_reverse_throughput_MBps"] = round(rev_mbps["ssh_link"], 1)
    result["reverse_throughput_ratio"] = round(rev_mbps["ssh_link"] / rev_mbps["tunnel"], 3)
    result["direct_tcp_rtt_us_p50"] = round(p50["direct"], 1)
    result["direct_tcp_rtt_us_p99"] = round(pct(rtt["direct"], 99), 1)
    result["direct_tcp_throughput_MBps"] = round(mbps["direct"], 1)
    result["direct_tcp_reverse_throughput_MBps"] = round(rev_mbps["direct"], 1)
    result["rtt_over_20ms"] = {m: sum(1 for v in rtt[m] if v > 20_000) for m in METHODS}
    result["cpu_ms_per_transfer"] = cpu
    result["cpu_ms_per_reverse_transfer"] = rev_cpu
    result["runs"] = args.runs
    result["rtt_n"] = args.rtt_n
    result["payload_bytes"] = HIDDEN.nbytes
    result["big_tensor_bytes"] = BIG_BYTES
    result["ssh_version"] = ssh_version()
    result["ssh_cipher"] = cipher
    print(json.dumps(result))


if __name__ == "__main__":
    main()
