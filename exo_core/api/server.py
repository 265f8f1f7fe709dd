"""Run the app with uvicorn inside the caller's task group (asyncio backend)."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Iterator

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from exo_core.api.http_guard import ConnectionLimits, guarded_protocol

log = logging.getLogger("exo_core.api")


class _Server(uvicorn.Server):
    """uvicorn's server that leaves signals to the node and reports when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The node owns SIGINT/SIGTERM: cancellation of serve_api is how the server is stopped.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.started_event.set()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port).

    Raises:
        OSError: the address cannot be bound, with a message naming it and the ``--chatgpt-api-port`` flag.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve API host {host!r}: {exc}") from exc
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot listen for the API on {host}:{port}: {exc.strerror}; "
            "pick another port with --chatgpt-api-port",
        ) from exc
    return sock


async def serve_api(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 3.0,
    limits: ConnectionLimits | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP until cancelled.

    Start it with ``port = await task_group.start(serve_api, app, host, port)``: it returns once the server
    accepts connections, with the bound port (useful with ``port=0``). On cancellation it stops accepting,
    gives open requests ``shutdown_timeout`` seconds (rounded up to whole seconds; then cancels them,
    which closes their backend streams) and returns within that plus about 2 s.

    Args:
        app: the ASGI app (from :func:`exo_core.api.create_app`).
        host: address to bind (``"0.0.0.0"``, ``"127.0.0.1"``, ``"::"``).
        port: port to bind; 0 for any free port.
        shutdown_timeout: seconds open requests get to finish when stopping.
        limits: header timeout and connection cap (:class:`~exo_core.api.http_guard.ConnectionLimits`;
            ``None``: its defaults).
        task_status: reports the bound port.

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: uvicorn failed to start.
    """
    sock = bind_socket(host, port)
    bound_port = int(sock.getsockname()[1])
    grace = max(1, math.ceil(shutdown_timeout))  # uvicorn takes whole seconds
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits or ConnectionLimits()),
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="none",
        timeout_graceful_shutdown=grace,
        timeout_keep_alive=5,
    )
    server = _Server(config)
    done = anyio.Event()
    run_scope = anyio.CancelScope(shield=True)  # uvicorn stops through should_exit, not by being cancelled

    async def run() -> None:
        try:
            with run_scope:
                await server.serve(sockets=[sock])
        finally:
            sock.close()
            done.set()
            server.started_event.set()  # wakes the waiter below if startup failed

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            await server.started_event.wait()
            if not server.started or done.is_set():
                raise RuntimeError(
                    f"the API server on {host}:{bound_port} failed to start (see the log above)"
                )
            log.info("API and web chat page on http://%s:%d/", _display_host(host), bound_port)
            task_status.started(bound_port)
            await done.wait()
            if not server.should_exit:
                raise RuntimeError(
                    f"the API server on {host}:{bound_port} stopped unexpectedly (see the log)"
                )
        finally:
            server.should_exit = True
            with anyio.move_on_after(grace + 2.0, shield=True):
                await done.wait()
            if not done.is_set():
                log.error("API server did not stop within %.1f s; forcing it", grace + 2.0)
                server.force_exit = True
                run_scope.cancel()


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host
