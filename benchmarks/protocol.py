"""Protocol benchmark: exo request RTT vs a grpcio asyncio unary call, and 64 MiB throughput vs raw sockets.

Everything runs on loopback in this process and prints ONE JSON object:
``exo_rtt_us_p50``, ``exo_rtt_us_p99``, ``grpc_rtt_us_p50``, ``grpc_rtt_us_p99``, ``rtt_ratio`` (exo / grpc),
``exo_throughput_MBps``, ``raw_socket_throughput_MBps``, ``throughput_ratio`` (exo / raw).

RTT: a request carrying the hidden state of one token of the default model (576 float32 = 2,304 bytes) in a
TENSOR message, echoed back by the peer's handler; gRPC carries the same payload bytes through a generic
(codegen-free) unary handler that echoes them. Throughput: one 64 MiB float32 tensor, sender and receiver in
two threads (exo: two event loops; raw: blocking ``sendall`` / ``recv_into``), best of a few runs.

Like with like: both receivers deliver every tensor into freshly allocated memory of its size (exo: the
buffer its parser allocates per message; raw: a new ``np.empty`` array per transfer). The raw baseline used
to reuse one warm buffer for every transfer, which skips the page faults a real receiver pays for a new
64 MiB array; nothing else about the raw baseline changed (same blocking calls, same threads).
Usage: ``python benchmarks/protocol.py [--rtt-n 2000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import threading
import time
from typing import Any

import anyio
import numpy as np

from exo_core.protocol import FrameType, RequestContext, Stage, Tensor, TensorMessage, encode
from exo_core.transport.settings import TransportSettings
from exo_core.transport.tcp import TcpTransport
from exo_core.transport.types import Incoming

HIDDEN = np.random.default_rng(0).standard_normal((1, 576), dtype=np.float32)  # 2,304 bytes
CTX = RequestContext("bench", "a", "smollm2-135m", (Stage("a", 0, 14), Stage("b", 15, 29)))
BIG_BYTES = 64 * 1024 * 1024


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def exo_rtt(n: int) -> list[float]:
    a = TcpTransport("a", host="127.0.0.1", port=0)
    b = TcpTransport("b", host="127.0.0.1", port=0)

    async def echo(incoming: Incoming) -> Any:
        return incoming.message

    b.on(FrameType.TENSOR, echo)
    msg = TensorMessage(CTX, 0, 0, Tensor.from_numpy(HIDDEN))
    out: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(a.run)
        await tg.start(b.run)
        await a.dial("127.0.0.1", b.port)
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            await a.request("b", msg, timeout=5)
            if i >= n // 10:
                out.append((time.perf_counter() - t0) * 1e6)
        tg.cancel_scope.cancel()
    return out


async def grpc_rtt(n: int) -> list[float]:
    import grpc

    payload = b"".join(bytes(p) for p in encode(TensorMessage(CTX, 0, 0, Tensor.from_numpy(HIDDEN))).parts)

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "exo.Bench", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    out: list[float] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/exo.Bench/Echo")
            for i in range(n + n // 10):
                t0 = time.perf_counter()
                reply = await call(payload, timeout=5)
                if i >= n // 10:
                    out.append((time.perf_counter() - t0) * 1e6)
            assert reply == payload
    finally:
        await server.stop(None)
    return out


def exo_throughput(runs: int) -> float:
    """Best MB/s sending one 64 MiB tensor from a transport in this thread to one in another thread."""
    big = np.ones(BIG_BYTES // 4, dtype=np.float32)
    settings = TransportSettings(idle_timeout=60)
    b = TcpTransport("b", host="127.0.0.1", port=0, settings=settings)
    got = threading.Semaphore(0)
    ready = threading.Event()
    stop = threading.Event()

    async def on_tensor(incoming: Incoming) -> None:
        assert isinstance(incoming.message, TensorMessage) and incoming.message.tensor.nbytes == BIG_BYTES
        got.release()

    b.on(FrameType.TENSOR, on_tensor)

    async def serve_b() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(b.run)
            ready.set()
            await anyio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
            tg.cancel_scope.cancel()

    thread = threading.Thread(target=anyio.run, args=(serve_b,), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("receiver did not start")
    best = float("inf")

    async def send_a() -> None:
        nonlocal best
        a = TcpTransport("a", host="127.0.0.1", port=0, settings=settings)
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await a.dial("127.0.0.1", b.port)
            msg = TensorMessage(CTX, 0, 0, Tensor.from_numpy(big))
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                await a.send("b", msg)
                if not await anyio.to_thread.run_sync(got.acquire, True, 30):
                    raise RuntimeError("tensor not received")
                best = min(best, time.perf_counter() - t0)
            tg.cancel_scope.cancel()

    try:
        anyio.run(send_a)
    finally:
        stop.set()
        thread.join(10)
    return BIG_BYTES / best / 1e6


def raw_throughput(runs: int) -> float:
    """Best MB/s of 64 MiB over plain blocking sockets (``sendall`` / ``recv_into``), two threads.

    The receiver reads each tensor into a new ``np.empty`` array (what a real receiver must do, and what
    exo's receiver does: it allocates a buffer per message), not into one warm buffer reused every time.
    """
    data = np.ones(BIG_BYTES // 4, dtype=np.float32)
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(10)
    port = lsock.getsockname()[1]
    done = threading.Semaphore(0)

    def receiver() -> None:
        conn, _ = lsock.accept()
        conn.settimeout(30)
        with conn:
            for _ in range(runs + 1):
                # Like exo's receiver, deliver each tensor into a freshly allocated array of its size.
                view = memoryview(np.empty(BIG_BYTES // 4, dtype=np.float32)).cast("B")
                got = 0
                while got < BIG_BYTES:
                    n = conn.recv_into(view[got:])
                    if not n:
                        return
                    got += n
                done.release()

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    best = float("inf")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            sock.sendall(memoryview(data).cast("B"))
            if not done.acquire(timeout=30):
                raise RuntimeError("raw receiver stalled")
            best = min(best, time.perf_counter() - t0)
    thread.join(10)
    lsock.close()
    return BIG_BYTES / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-n", type=int, default=2000, help="timed requests per protocol")
    parser.add_argument("--runs", type=int, default=3, help="timed 64 MiB transfers per method")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    exo = anyio.run(exo_rtt, args.rtt_n)
    grpc_ = anyio.run(grpc_rtt, args.rtt_n)
    exo_mbps = exo_throughput(args.runs)
    raw_mbps = raw_throughput(args.runs)
    result = {
        "exo_rtt_us_p50": round(statistics.median(exo), 1),
        "exo_rtt_us_p99": round(pct(exo, 99), 1),
        "grpc_rtt_us_p50": round(statistics.median(grpc_), 1),
        "grpc_rtt_us_p99": round(pct(grpc_, 99), 1),
        "rtt_ratio": round(statistics.median(exo) / statistics.median(grpc_), 3),
        "exo_throughput_MBps": round(exo_mbps, 1),
        "raw_socket_throughput_MBps": round(raw_mbps, 1),
        "throughput_ratio": round(exo_mbps / raw_mbps, 3),
        "tensor_bytes": HIDDEN.nbytes,
        "big_tensor_bytes": BIG_BYTES,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
