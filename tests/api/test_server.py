"""serve_api: started reports the bound port, bind errors are clear, cancellation stops it in bounded time."""

from __future__ import annotations

import socket
import time

import anyio
import httpx
import pytest
from anyio.abc import TaskStatus

from exo_core.api import create_app, serve_api

from .support import FakeBackend, Script, wait_closed


async def test_started_reports_the_bound_port_and_the_server_answers() -> None:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_api, create_app(FakeBackend()), "127.0.0.1", 0)
        assert isinstance(port, int) and port > 0
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthcheck")
        assert response.status_code == 200
        tg.cancel_scope.cancel()


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="--chatgpt-api-port"):
            await serve_api(create_app(FakeBackend()), "127.0.0.1", port)


async def test_cancellation_stops_the_server_and_open_streams_in_bounded_time() -> None:
    backend = FakeBackend(lambda call: Script(tokens=[f" t{i}" for i in range(5000)], delay=0.01))
    app = create_app(backend)
    server_scope = anyio.CancelScope()
    stopped = anyio.Event()

    async def run_server(*, task_status: TaskStatus[int]) -> None:
        try:
            with server_scope:
                await serve_api(app, "127.0.0.1", 0, shutdown_timeout=1.0, task_status=task_status)
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        port = await tg.start(run_server)
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
            with pytest.raises(httpx.HTTPError):  # the server goes away in the middle of the answer
                async with client.stream(
                    "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body
                ) as r:
                    seen = 0
                    async for line in r.aiter_lines():
                        seen += line.startswith("data: ")
                        if seen == 3:
                            t0 = time.monotonic()
                            server_scope.cancel()
                            with anyio.fail_after(6):
                                await stopped.wait()
                            elapsed = time.monotonic() - t0
    assert elapsed < 4.0
    await wait_closed(backend.calls[0])
    assert not backend.calls[0].completed
    with socket.socket() as probe:  # nothing listens there any more (TIME_WAIT entries are fine)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
