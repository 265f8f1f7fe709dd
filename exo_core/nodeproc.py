"""Real ``exo`` nodes in subprocesses on loopback, for tests and benchmarks.

Each :class:`NodeProcess` runs ``python -m exo_core.cli`` with its own config dir (so its own persistent
node id), a free node port and a free API port on 127.0.0.1, and an explicit discovery module (tests never
use the UDP default on the real network). :meth:`NodeProcess.start` returns once ``/healthcheck`` answers.

Several nodes share this machine's cores, so each runs with ``OPENBLAS_NUM_THREADS=1`` unless ``env`` says
otherwise: OpenBLAS worker threads spin while idle, and node processes with spinning threads slow each other
down several times over (see benchmarks/cluster.py).

With ``netns``, the node runs inside that network namespace (``ip netns exec``; root only), reachable from
here by nothing but what the test sets up; its API is then called from inside the namespace too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exo_core.errors import ExoError


def find_free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that are free on ``host`` right now (bound together, then released)."""
    import socket

    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


#: What :meth:`NodeProcess._in_netns` runs inside the namespace: one HTTP call, JSON in and out; exit 3 when
#: nothing listens yet, 1 with the status and body on an HTTP error.
_NETNS_HTTP = """
import json, sys, urllib.error, urllib.request
r = json.load(sys.stdin)
data = None if r["body"] is None else json.dumps(r["body"]).encode()
headers = {"content-type": "application/json"}
req = urllib.request.Request(r["url"], data=data, method=r["method"], headers=headers)
try:
    with urllib.request.urlopen(req, timeout=r["timeout"]) as resp:
        sys.stdout.write(resp.read().decode())
except urllib.error.HTTPError as exc:
    sys.exit(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}")
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


class NodeProcessError(ExoError):
    """A node process failed to start or to answer."""


@dataclass
class NodeProcess:
    """One ``exo`` node in a subprocess (see module docstring)."""

    workdir: Path
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    node_id: str | None = None
    node_port: int = 0
    api_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    #: a network namespace to run the node in (``ip netns exec``), e.g. one with only loopback
    netns: str | None = None

    def __post_init__(self) -> None:
        if not self.node_port or not self.api_port:
            self.node_port, self.api_port = find_free_ports(2)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.node_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "exo_core.cli",
            "--node-host",
            "127.0.0.1",
            "--node-port",
            str(self.node_port),
            "--chatgpt-api-host",
            "127.0.0.1",
            "--chatgpt-api-port",
            str(self.api_port),
        ]
        if self.node_id:
            cmd += ["--node-id", self.node_id]
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *cmd, *self.args]

    def start(self, timeout: float = 60.0) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
        env.update(
            {
                "EXO_CONFIG_DIR": str(self.workdir / "config"),
                "PYTHONUNBUFFERED": "1",
                "OPENBLAS_NUM_THREADS": "1",
            }
        )
        env.update(self.env)
        env = {k: v for k, v in env.items() if v != ""}  # an empty value in ``self.env`` unsets a variable
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NodeProcessError(f"node exited with {self.proc.returncode} at start:\n{self.tail()}")
            try:
                health = self.get("/healthcheck", timeout=2)
                self.node_id = str(health.get("node_id") or self.node_id)
                return self
            except (OSError, ValueError):
                time.sleep(0.1)
        self.stop()
        raise NodeProcessError(f"node did not answer /healthcheck within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        if self.netns:
            return self._in_netns("GET", path, None, timeout)
        with urllib.request.urlopen(self.api + path, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def post(self, path: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        if self.netns:
            return self._in_netns("POST", path, body, timeout)
        req = urllib.request.Request(
            self.api + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as exc:
            raise NodeProcessError(
                f"POST {path} -> {exc.code}: {exc.read().decode(errors='replace')}"
            ) from exc

    def _in_netns(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        """One API call made from inside :attr:`netns` (a short Python child there)."""
        assert self.netns is not None
        request = json.dumps({"url": self.api + path, "method": method, "body": body, "timeout": timeout})
        try:
            done = subprocess.run(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c", _NETNS_HTTP],
                input=request.encode(),
                capture_output=True,
                timeout=timeout + 10,
            )
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{method} {path} in {self.netns}: no answer within {timeout} s") from None
        if done.returncode == 3:  # could not connect (the node is still starting)
            raise ConnectionRefusedError(done.stderr.decode(errors="replace").strip())
        if done.returncode:
            raise NodeProcessError(f"{method} {path} in {self.netns}: {done.stderr.decode(errors='replace')}")
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def stream(self, path: str, body: dict[str, Any], timeout: float = 120.0) -> Iterator[dict[str, Any]]:
        """POST ``body`` with ``"stream": true``; yield each server-sent JSON chunk (error chunks too)."""
        if self.netns:
            raise NodeProcessError("streaming from a node in a network namespace is not supported")
        req = urllib.request.Request(
            self.api + path,
            data=json.dumps({**body, "stream": True}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data: {"):
                    yield json.loads(line[6:])

    def wait_for_nodes(self, n: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until this node's topology shows ``n`` reachable nodes (itself included)."""
        deadline = time.monotonic() + timeout
        topo: dict[str, Any] = {}
        while time.monotonic() < deadline:
            topo = self.get("/v1/topology")
            if len(topo.get("nodes", [])) >= n:
                return topo
            time.sleep(0.2)
        raise NodeProcessError(
            f"only {len(topo.get('nodes', []))} of {n} nodes after {timeout} s:\n{self.tail()}"
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def direct_to(node: NodeProcess) -> list[str]:
    """Flags that make a node dial ``node`` on loopback (the ``direct`` discovery module)."""
    return ["--discovery-module", "direct", "--peer-host", "127.0.0.1", "--peer-port", str(node.node_port)]


def peers_file(path: Path, peers: dict[str, str]) -> Path:
    """Write a seed-format peers.json mapping labels to ``host:port`` addresses."""
    path.write_text(
        json.dumps({"peers": {label: {"address": addr} for label, addr in peers.items()}}, indent=2)
    )
    return path
