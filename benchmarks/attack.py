"""Hostile and heavy load against real ``exo`` nodes on loopback; prints one JSON object.

    .venv/bin/python benchmarks/attack.py [--only NAME ...]

Each attack of issue #18 is replayed against a node started for the purpose, bounded in count and time, while
a monitor samples the node's RSS (``/proc/<pid>/status``) and open descriptors every 50 ms, asks
``/healthcheck`` every 200 ms and a one-token chat every second. Per attack the JSON gives the RSS growth
over the node's RSS just before it (MB), the longest ``/healthcheck`` and chat answers during it (s; a 429
is an answer), and the attack's own figures. ``acceptance`` checks issue #18's first two acceptance points:
RSS growth <= 64 MB, chat and ``/healthcheck`` within 1 s, 0 legitimate pings refused, 0 other
streams lost and the 8 MB prompt's 400 within 1 s, 1,000 half-sent requests closed within the header
timeout, and 429 with ``Retry-After`` at once when full.

Nodes: ``keyed`` (``--cluster-key``) with a keyed peer, so that it serves a 2-node plan, and ``open`` (no
key) for the attacks that need a completed handshake. Traffic goes to 127.0.0.1 only.

Attacks:
- ``preauth_memory``: 4 connections send a HELLO header declaring a 250 MiB frame, then up to 248 MiB.
- ``ping_flood``: one peer completes the handshake (keyless node), then sends PINGs that ask for a reply
  for up to 10 s and never reads the PONGs.
- ``big_prompt``: an 8 MB chat prompt of digits while another user streams.
- ``idle_transport``: 700 idle connections to the transport port, then 10 ``exo ping`` s with the key.
- ``half_sent_http``: 1,000 HTTP connections that send half a request line.
- ``concurrent_streams``: 256 concurrent streaming chats of 8 tokens from another client (source address
  127.0.0.2): the node's admission keeps a share of its slots for other clients (``--api-client-share``), so
  the monitor's chat (from 127.0.0.1) is served beside the flood.
- ``client_errors``: ``seed: -1`` (valid: 200), a lone surrogate and 100,000-deep nesting (400s); none may be
  a 5xx.
- ``foreign_origin``: a foreign ``Host`` on the loopback-bound API, a cross-origin POST and preflight.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import anyio

from exo_core.nodeproc import NodeProcess, peers_file
from exo_core.protocol import Envelope, Hello, Ping, Ready, encode_bytes
from exo_core.transport.ping import PingError, ping

KEY = "attack-bench-" + secrets.token_hex(8)
FLOODER = "127.0.0.2"  # source address of concurrent_streams' clients
HEADER_TIMEOUT = 5.0  # the keyed node's --api-header-timeout
CHAT = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request (HTTP errors included)."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Monitor:
    """Samples a node while an attack runs (see module docstring)."""

    def __init__(self, node: NodeProcess) -> None:
        assert node.proc is not None
        self.node = node
        self.pid = node.proc.pid
        self.base_rss = rss_mb(self.pid)
        self.max_rss = self.base_rss
        self.max_fds = fds(self.pid)
        self.health: list[float] = []
        self.chat: list[float] = []
        self.probe_errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=f, daemon=True) for f in (self._sample, self._health, self._chat)
        ]

    def __enter__(self) -> Monitor:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=70)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.max_rss = max(self.max_rss, rss_mb(self.pid))
                self.max_fds = max(self.max_fds, fds(self.pid))
            except OSError:
                return

    def _probe(self, out: list[float], fn: Callable[[], object], every: float) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                fn()
            except Exception as exc:  # a probe that fails counts as not answered within any bound
                self.probe_errors.append(f"{type(exc).__name__}: {exc}")
                out.append(float("inf"))
            else:
                out.append(time.monotonic() - t0)
            self._stop.wait(max(0.0, every - (time.monotonic() - t0)))

    def _health(self) -> None:
        self._probe(self.health, lambda: http(self.node.api + "/healthcheck", timeout=60), 0.2)

    def _chat(self) -> None:
        body = json.dumps(CHAT).encode()
        headers = {"content-type": "application/json"}
        url = self.node.api + "/v1/chat/completions"
        self._probe(self.chat, lambda: http(url, body, headers, timeout=60), 1.0)

    def report(self) -> dict[str, Any]:
        return {
            "rss_growth_mb": round(self.max_rss - self.base_rss, 1),
            "max_fds": self.max_fds,
            "max_healthcheck_s": round(max(self.health, default=0.0), 3),
            "max_chat_s": round(max(self.chat, default=0.0), 3),
            "probes": len(self.health) + len(self.chat),
            "probe_errors": self.probe_errors[:3],
        }


# ---- the attacks -----------------------------------------------------------------------------------------


def preauth_memory(keyed: NodeProcess, _open: NodeProcess) -> dict[str, Any]:
    sent: list[int] = []

    def one() -> None:
        total = 0
        try:
            with socket.create_connection(("127.0.0.1", keyed.node_port), timeout=5) as s:
                s.sendall(b"EXO\x01\x01" + struct.pack(">I", 250 << 20))
                chunk = b"\0" * (4 << 20)
                for _ in range(62):
                    s.sendall(chunk)
                    total += len(chunk)
        except OSError:
            pass
        sent.append(total)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: one(), range(4)))
    return {"bytes_accepted_mb": round(sum(sent) / 2**20, 1)}


def ping_flood(_keyed: NodeProcess, open_node: NodeProcess) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, buffer little
    sock.settimeout(2.0)
    sock.connect(("127.0.0.1", open_node.node_port))
    # a keyless handshake without waiting for the node's side (HELLO and READY go out at once)
    sock.sendall(encode_bytes(Hello("attacker", dialer=True, tool=True, conn_seq=1)) + encode_bytes(Ready()))
    dst = open_node.node_id or ""
    batch = b"".join(
        encode_bytes(Ping(i), Envelope("attacker", dst, corr=i, wants_reply=True)) for i in range(1, 1001)
    )
    sent = 0
    stalled_s = 0.0
    closed_by_node = False
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 10.0 and sent < 2_000_000:
            try:
                sock.sendall(batch)
                sent += 1000
            except TimeoutError:
                stalled_s += 2.0  # the node stopped reading from us: backpressure
            except OSError:
                closed_by_node = True
                break
    finally:
        sock.close()
    return {"pings_sent": sent, "stalled_s": stalled_s, "closed_by_node": closed_by_node}


def big_prompt(keyed: NodeProcess, _open: NodeProcess) -> dict[str, Any]:
    other: dict[str, Any] = {}

    def other_user() -> None:
        body = {**CHAT, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 60}
        tokens, error = 0, None
        try:
            for chunk in keyed.stream("/v1/chat/completions", body, timeout=120):
                if "error" in chunk:
                    error = chunk["error"]
                tokens += sum(1 for c in chunk.get("choices", []) if c.get("delta", {}).get("content"))
        except OSError as exc:
            error = str(exc)
        other.update(tokens=tokens, error=error)

    streamer = threading.Thread(target=other_user)
    streamer.start()
    time.sleep(1.0)
    body = json.dumps({"messages": [{"role": "user", "content": "1234567890" * 808960}], "max_tokens": 2})
    t0 = time.monotonic()
    status, _, _ = http(
        keyed.api + "/v1/chat/completions", body.encode(), {"content-type": "application/json"}, timeout=60
    )
    elapsed = time.monotonic() - t0
    streamer.join(timeout=150)
    return {
        "status": status,
        "answer_s": round(elapsed, 3),
        "other_stream_tokens": other.get("tokens", 0),
        "other_streams_lost": int(other.get("error") is not None or not other.get("tokens")),
    }


def idle_transport(keyed: NodeProcess, _open: NodeProcess) -> dict[str, Any]:
    idle = []
    try:
        for _ in range(700):
            try:
                idle.append(socket.create_connection(("127.0.0.1", keyed.node_port), timeout=5))
            except OSError:
                break
        refused: list[str] = []
        for _ in range(10):
            try:
                anyio.run(lambda: ping("127.0.0.1", keyed.node_port, cluster_key=KEY, count=1, timeout=5.0))
            except PingError as exc:
                refused.append(str(exc))
    finally:
        for s in idle:
            s.close()
    return {"idle_connections": len(idle), "legit_pings_refused": len(refused), "refusals": refused[:3]}


def half_sent_http(keyed: NodeProcess, _open: NodeProcess) -> dict[str, Any]:
    socks = []
    opened: list[float] = []  # each connection's header timeout counts from its own opening
    t0 = time.monotonic()
    try:
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", keyed.api_port), timeout=5)
            opened.append(time.monotonic())
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            s.setblocking(False)
            socks.append(s)
        closed = 0
        last_close = 0.0
        pending = set(range(len(socks)))
        while pending and time.monotonic() - t0 < HEADER_TIMEOUT + 10:
            for i in list(pending):
                try:
                    if socks[i].recv(4096) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                else:
                    continue  # the 408 came; the close follows
                pending.discard(i)
                closed += 1
                last_close = max(last_close, time.monotonic() - opened[i])
            time.sleep(0.02)
    finally:
        for s in socks:
            s.close()
    return {
        "connections": len(socks),
        "closed_by_node": closed,
        "opening_all_s": round(opened[-1] - t0, 2) if opened else None,
        # the longest time from a connection's opening to its close by the node
        "all_closed_within_s": round(last_close, 2) if closed == len(socks) else None,
        "header_timeout_s": HEADER_TIMEOUT,
    }


def concurrent_streams(keyed: NodeProcess, _open: NodeProcess) -> dict[str, Any]:

    def one(i: int) -> tuple[str, float, str | None]:
        body = {**CHAT, "messages": [{"role": "user", "content": f"Count to ten. ({i})"}], "max_tokens": 8}
        t0 = time.monotonic()
        # from 127.0.0.2: another host than the monitor's user, as a flooding machine on a LAN would be
        conn = HTTPConnection("127.0.0.1", keyed.api_port, timeout=120, source_address=(FLOODER, 0))
        first = None
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                json.dumps({**body, "stream": True}).encode(),
                {"content-type": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                retry = resp.getheader("retry-after")
                kind = "429" if resp.status == 429 and retry else f"http {resp.status}"
                return kind, time.monotonic() - t0, None
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data: {") and first is None and '"content":"' in line:
                    first = time.monotonic() - t0
                if '"error"' in line:
                    return "lost", 0.0, line[:200]
        except OSError as exc:
            return "lost", 0.0, str(exc)
        finally:
            conn.close()
        return "ok", first if first is not None else 0.0, None

    with ThreadPoolExecutor(256) as pool:
        results = list(pool.map(one, range(256)))
    kinds = [r[0] for r in results]
    ok_first = sorted(r[1] for r in results if r[0] == "ok")
    refused = sorted(r[1] for r in results if r[0] == "429")
    return {
        "ok": kinds.count("ok"),
        "refused_429": kinds.count("429"),
        "lost": kinds.count("lost"),
        "other": [k for k in kinds if k not in ("ok", "429", "lost")][:5],
        "first_token_p99_s": round(ok_first[int(0.99 * (len(ok_first) - 1))], 2) if ok_first else None,
        "max_429_s": round(refused[-1], 3) if refused else None,
    }


def client_errors(keyed: NodeProcess, _open: NodeProcess) -> dict[str, Any]:
    url = keyed.api + "/v1/chat/completions"
    bodies = {
        "negative_seed": b'{"messages":[{"role":"user","content":"hi"}],"seed":-1,"max_tokens":2}',
        "lone_surrogate": b'{"messages":[{"role":"user","content":"a\\ud800"}],"max_tokens":2}',
        "deep_nesting": b'{"messages":' + b"[" * 100000 + b"]" * 100000 + b"}",
    }
    return {"statuses": {name: http(url, body)[0] for name, body in bodies.items()}}


def foreign_origin(keyed: NodeProcess, _open: NodeProcess) -> dict[str, Any]:
    url = keyed.api + "/v1/chat/completions"
    body = json.dumps(CHAT).encode()
    foreign_host = http(url, body, {"Host": "attacker.example", "content-type": "application/json"})[0]
    cross_post = http(url, body, {"Origin": "http://localhost:3000", "content-type": "text/plain"})[0]
    req = urllib.request.Request(
        url,
        method="OPTIONS",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            preflight, allow = resp.status, resp.headers.get("access-control-allow-origin")
    except urllib.error.HTTPError as exc:
        preflight, allow = exc.code, exc.headers.get("access-control-allow-origin")
    return {
        "foreign_host": foreign_host,
        "cross_origin_post": cross_post,
        "preflight": preflight,
        "allow": allow,
    }


ATTACKS: dict[str, Callable[[NodeProcess, NodeProcess], dict[str, Any]]] = {
    "preauth_memory": preauth_memory,
    "ping_flood": ping_flood,
    "big_prompt": big_prompt,
    "idle_transport": idle_transport,
    "half_sent_http": half_sent_http,
    "concurrent_streams": concurrent_streams,
    "client_errors": client_errors,
    "foreign_origin": foreign_origin,
}


def acceptance(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for name, r in results.items():
        out[f"{name}_rss_le_64mb"] = r["rss_growth_mb"] <= 64
        out[f"{name}_answers_within_1s"] = r["max_healthcheck_s"] <= 1.0 and r["max_chat_s"] <= 1.0
    if "idle_transport" in results:
        out["legit_pings_refused_0"] = results["idle_transport"]["legit_pings_refused"] == 0
    if "big_prompt" in results:
        r = results["big_prompt"]
        out["big_prompt_400_within_1s"] = r["status"] == 400 and r["answer_s"] <= 1.0
        out["other_streams_lost_0"] = r["other_streams_lost"] == 0
    if "half_sent_http" in results:
        r = results["half_sent_http"]
        within = r["all_closed_within_s"]
        out["half_sent_closed_within_header_timeout"] = within is not None and within <= HEADER_TIMEOUT + 1.0
    if "concurrent_streams" in results:
        r = results["concurrent_streams"]
        out["full_node_answers_429_at_once"] = (
            r["refused_429"] > 0 and r["lost"] == 0 and (r["max_429_s"] or 0) <= 1.0
        )
    if "client_errors" in results:
        # seed -1 is valid (OpenAI takes any integer; the wire carries signed 64 bits): 200, not an error
        out["client_errors_no_5xx"] = all(v < 500 for v in results["client_errors"]["statuses"].values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), help="run only these attacks")
    args = parser.parse_args()
    chosen = args.only or list(ATTACKS)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="exo-bench-attack-") as d:
        tmp = Path(d)
        empty = [
            "--discovery-module",
            "manual",
            "--discovery-config-path",
            str(peers_file(tmp / "e.json", {})),
        ]
        limits = ["--api-header-timeout", str(HEADER_TIMEOUT)]
        keyed_env = {"EXO_CLUSTER_KEY": KEY}
        peer = NodeProcess(tmp / "peer", args=empty, env=keyed_env).start()
        nodes = [peer]
        try:
            peers = peers_file(tmp / "p.json", {"peer": peer.address})
            keyed_args = ["--discovery-module", "manual", "--discovery-config-path", str(peers), *limits]
            keyed = NodeProcess(tmp / "keyed", args=keyed_args, env=keyed_env).start()
            nodes.append(keyed)
            open_node = NodeProcess(tmp / "open", args=[*empty, *limits]).start()
            nodes.append(open_node)
            keyed.wait_for_nodes(2)
            keyed.post("/v1/chat/completions", CHAT)  # loads the model on both nodes of the plan
            open_node.post("/v1/chat/completions", CHAT)
            for name in chosen:
                target = open_node if name == "ping_flood" else keyed
                time.sleep(2.0)  # let the previous attack's connections and requests drain
                with Monitor(target) as monitor:
                    figures = ATTACKS[name](keyed, open_node)
                    time.sleep(1.0)  # the monitor keeps sampling the aftermath
                results[name] = {**figures, **monitor.report()}
                if target.proc is not None and target.proc.poll() is not None:
                    results[name]["node_died"] = True
                    break
        finally:
            for node in nodes:
                node.stop()
    print(json.dumps({"attacks": results, "acceptance": acceptance(results)}))


if __name__ == "__main__":
    main()
