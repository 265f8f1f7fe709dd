"""Limits of the HTTP server against slow, idle and too many clients, on a real uvicorn server on loopback.

Header timeout and connection cap (:mod:`exo_core.api.http_guard`), body timeout
(:func:`exo_core.api.parsing.read_json_object`), admission control (:mod:`exo_core.api.admission`).
"""

from __future__ import annotations

import functools
import selectors
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from exo_core.api import create_app, serve_api
from exo_core.api.admission import Admission
from exo_core.api.errors import APIError
from exo_core.api.http_guard import EVICT_AFTER, ConnectionLimits

from .support import Call, FakeBackend, Script, running_api

MSG = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def guarded_api(
    backend: FakeBackend, limits: ConnectionLimits, **app_options: Any
) -> AsyncIterator[tuple[str, int]]:
    """A real server with connection ``limits``; yields its URL and port."""
    async with anyio.create_task_group() as tg:
        serve = functools.partial(serve_api, limits=limits)
        port = await tg.start(serve, create_app(backend, **app_options), "127.0.0.1", 0)
        yield f"http://127.0.0.1:{port}", port
        tg.cancel_scope.cancel()


def open_raw(port: int, count: int, first_bytes: bytes) -> list[socket.socket]:
    """``count`` connections that each sent ``first_bytes`` (nothing, or part of a request) and stopped."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket], within: float) -> tuple[int, list[bytes]]:
    """How many of ``socks`` the server closed within ``within`` seconds, and what it sent them first."""
    deadline = time.monotonic() + within
    received: dict[int, bytes] = {}
    closed = 0
    with selectors.DefaultSelector() as sel:  # epoll: more than 1,024 descriptors
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data:
                    received[key.fd] = received.get(key.fd, b"") + data
                else:
                    closed += 1
                    sel.unregister(sock)
    return closed, list(received.values())


async def test_half_sent_requests_are_closed_within_the_header_timeout_and_others_are_served() -> None:
    limits = ConnectionLimits(header_timeout=1.5, max_connections=4096)
    async with guarded_api(FakeBackend(), limits) as (url, port):
        half = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"
        t0 = time.monotonic()
        idle = await anyio.to_thread.run_sync(open_raw, port, 500, b"")
        partial = await anyio.to_thread.run_sync(open_raw, port, 500, half)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                assert (await client.get("/healthcheck")).status_code == 200  # served during the flood
            closed, answers = await anyio.to_thread.run_sync(closed_by_server, idle + partial, 8.0)
            elapsed = time.monotonic() - t0
        finally:
            for s in idle + partial:
                s.close()
    assert closed == 1000
    assert elapsed < 1.5 + 4.0
    # a client that sent part of a request learns why; an idle one is just closed
    assert len(answers) == 500 and all(a.startswith(b"HTTP/1.1 408") for a in answers)


async def test_header_timeout_is_not_extended_by_trickled_bytes() -> None:
    limits = ConnectionLimits(header_timeout=1.0)
    async with guarded_api(FakeBackend(), limits) as (_url, port):
        sock = await anyio.to_thread.run_sync(open_raw, port, 1, b"GET /healthcheck HTTP/1.1\r\n")

        def trickle() -> float:
            t0 = time.monotonic()
            try:
                for _ in range(20):  # one header byte every 0.25 s: never finishes the headers
                    sock[0].sendall(b"X")
                    time.sleep(0.25)
            except OSError:
                pass
            closed, _ = closed_by_server(sock, 5.0)
            assert closed == 1
            return time.monotonic() - t0

        try:
            elapsed = await anyio.to_thread.run_sync(trickle)
        finally:
            sock[0].close()
    assert elapsed < 3.0


async def test_keep_alive_connections_get_the_header_timeout_again_after_each_response() -> None:
    limits = ConnectionLimits(header_timeout=1.0)
    async with guarded_api(FakeBackend(), limits) as (url, _port):
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            for _ in range(3):  # a well-behaved keep-alive client is unaffected
                assert (await client.get("/healthcheck")).status_code == 200
                await anyio.sleep(0.6)


async def test_connection_cap_evicts_the_oldest_idle_connection_not_a_request() -> None:
    backend = FakeBackend(lambda call: Script(tokens=[" a", " b", " c"], delay=0.5))
    limits = ConnectionLimits(header_timeout=30, max_connections=20)
    async with guarded_api(backend, limits) as (url, port):
        idle = await anyio.to_thread.run_sync(open_raw, port, 20, b"")
        await anyio.sleep(EVICT_AFTER + 0.2)  # only a connection idle for that long gives way
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                # a real request at the cap: an idle connection gives way, the request is served
                response = await client.post("/v1/chat/completions", json={"messages": MSG})
                assert response.status_code == 200
                assert response.json()["choices"][0]["message"]["content"] == " a b c"
            closed, _ = await anyio.to_thread.run_sync(closed_by_server, idle, 2.0)
            assert closed >= 1
        finally:
            for s in idle:
                s.close()


async def test_connection_cap_never_evicts_a_connection_that_just_arrived() -> None:
    """In a burst, a connection opened a moment ago may have sent its request unread: the newcomer gets the
    503 instead, and the young connection is still served."""
    limits = ConnectionLimits(header_timeout=30, max_connections=3)
    async with guarded_api(FakeBackend(), limits) as (_url, port):
        young = await anyio.to_thread.run_sync(open_raw, port, 3, b"")
        try:
            await anyio.sleep(0.2)
            newcomer = await anyio.to_thread.run_sync(open_raw, port, 1, b"")
            try:
                closed, answers = await anyio.to_thread.run_sync(closed_by_server, newcomer, 3.0)
            finally:
                newcomer[0].close()
            assert closed == 1 and answers and answers[0].startswith(b"HTTP/1.1 503")
            for s in young:
                s.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            _closed, answers = await anyio.to_thread.run_sync(closed_by_server, young, 3.0)
            assert len(answers) == 3 and all(a.startswith(b"HTTP/1.1 200") for a in answers)
        finally:
            for s in young:
                s.close()


async def test_connection_cap_answers_503_when_every_connection_is_busy() -> None:
    backend = FakeBackend(lambda call: Script(tokens=[f" t{i}" for i in range(40)], delay=0.05))
    limits = ConnectionLimits(header_timeout=30, max_connections=2)
    async with guarded_api(backend, limits) as (url, port):
        body = {"messages": MSG, "stream": True}
        async with httpx.AsyncClient(base_url=url, timeout=10) as a, httpx.AsyncClient(base_url=url) as b:
            async with (
                a.stream("POST", "/v1/chat/completions", json=body) as ra,
                b.stream("POST", "/v1/chat/completions", json=body) as rb,
            ):
                assert ra.status_code == rb.status_code == 200
                third = await anyio.to_thread.run_sync(open_raw, port, 1, b"")
                try:
                    closed, answers = await anyio.to_thread.run_sync(closed_by_server, third, 3.0)
                finally:
                    third[0].close()
                assert closed == 1
                assert answers and answers[0].startswith(b"HTTP/1.1 503")
                assert b"retry-after: 1" in answers[0].lower()


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    async with running_api(FakeBackend(), body_timeout=0.5) as url:
        port = int(url.rsplit(":", 1)[1])
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"messages":'
        )
        sock = await anyio.to_thread.run_sync(open_raw, port, 1, head)
        try:
            _closed, answers = await anyio.to_thread.run_sync(closed_by_server, sock, 3.0)
        finally:
            sock[0].close()
    assert answers and answers[0].startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 0.5 s" in answers[0]


async def test_a_declared_oversize_body_is_413_before_it_is_read() -> None:
    async with running_api(FakeBackend(), max_body_bytes=1000) as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: 900000000\r\n\r\n"
        sock = await anyio.to_thread.run_sync(open_raw, port, 1, head)
        try:
            _closed, answers = await anyio.to_thread.run_sync(closed_by_server, sock, 3.0)
        finally:
            sock[0].close()
    assert answers and answers[0].startswith(b"HTTP/1.1 413")


async def test_admission_queues_then_answers_429_with_retry_after() -> None:
    gate = anyio.Event()

    def script(call: Call) -> Script:
        return Script(tokens=[" x"], delay=0.0 if gate.is_set() else 0.8)

    backend = FakeBackend(script)
    async with (
        running_api(backend, max_in_flight=1, max_queued=1) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        results: dict[str, httpx.Response] = {}

        async def post(name: str) -> None:
            results[name] = await client.post("/v1/chat/completions", json={"messages": MSG})

        async with anyio.create_task_group() as tg:
            tg.start_soon(post, "first")
            with anyio.fail_after(5):
                await backend.first_call()
            tg.start_soon(post, "queued")
            await anyio.sleep(0.2)
            assert len(backend.calls) == 1  # the second waits for the slot: not started yet
            t0 = time.monotonic()
            refused = await client.post("/v1/chat/completions", json={"messages": MSG})
            assert time.monotonic() - t0 < 0.5  # refused at once, not after waiting
        gate.set()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "too_many_requests"
    assert results["first"].status_code == 200 and results["queued"].status_code == 200
    assert len(backend.calls) == 2


async def test_a_queued_request_whose_client_leaves_frees_its_place() -> None:
    backend = FakeBackend(lambda call: Script(tokens=[" x"], delay=1.0))
    async with (
        running_api(backend, max_in_flight=1, max_queued=1) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                assert (await client.post("/v1/chat/completions", json={"messages": MSG})).status_code == 200

            tg.start_soon(first)
            with anyio.fail_after(5):
                await backend.first_call()
            with anyio.move_on_after(0.3):  # queued, then the client gives up
                await client.post("/v1/chat/completions", json={"messages": MSG})
            await anyio.sleep(0.2)
            third = await client.post("/v1/chat/completions", json={"messages": MSG})
            assert third.status_code == 200  # it took the place, not a 429
    assert len(backend.calls) == 2  # the abandoned one never reached the backend


async def test_admission_hands_slots_over_in_arrival_order() -> None:
    admission = Admission(max_in_flight=1, max_queued=5)
    order: list[int] = []

    async def user(i: int) -> None:
        async with admission.slot(f"r{i}"):
            order.append(i)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(user, i)
            await anyio.sleep(0.001)
    assert order == list(range(6))
    assert admission.in_flight == 0 and admission.queued == 0


async def test_admission_cancelled_while_handed_a_slot_passes_it_on() -> None:
    admission = Admission(max_in_flight=1, max_queued=2)
    done: list[str] = []
    with pytest.raises(APIError):
        async with admission.slot("a"):
            async with anyio.create_task_group() as tg:

                async def waiter(name: str) -> None:
                    async with admission.slot(name):
                        done.append(name)

                tg.start_soon(waiter, "b")
                tg.start_soon(waiter, "c")
                await anyio.sleep(0.05)
                assert admission.queued == 2
                with pytest.raises(APIError) as refused:
                    async with admission.slot("d"):
                        pass
                assert refused.value.status == 429
                tg.cancel_scope.cancel()  # b and c leave the queue
            raise refused.value
    assert admission.in_flight == 0 and admission.queued == 0 and done == []
