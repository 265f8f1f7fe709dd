"""Responses that run a generation while watching the client: server-sent events and plain JSON.

:class:`GenerationResponse` runs a producer coroutine next to a task that waits for the client's
``http.disconnect``; a client that goes away cancels the producer, which closes the backend iterator and so
cancels the request on every node. This works the same for streamed and non-streamed answers and does not
depend on the ASGI server noticing the disconnect only when a write fails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("exo_core.api")

Producer = Callable[["ResponseWriter"], Awaitable[None]]


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class ResponseWriter:
    """What a producer uses to answer: either :meth:`json` once, or :meth:`start_events` then events.

    Args:
        send: the ASGI send callable.
        request_id: sent as the ``x-request-id`` header.
    """

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id
        self.started = False
        self.complete = False

    def _headers(
        self, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type.encode()), (b"x-request-id", self._request_id.encode())]
        return headers + (extra or [])

    async def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """Send a complete JSON response (with extra ``headers``)."""
        data = dumps(body)
        self.started = True
        extra = [(b"content-length", str(len(data)).encode())]
        extra += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        headers_out = self._headers("application/json", extra)
        await self._send({"type": "http.response.start", "status": status, "headers": headers_out})
        self.complete = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def start_events(self) -> None:
        """Start a ``text/event-stream`` response (status 200)."""
        self.started = True
        extra = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        headers = self._headers("text/event-stream; charset=utf-8", extra)
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def event(self, obj: Any) -> None:
        """Send one ``data: <json>`` event."""
        await self._body(b"data: " + dumps(obj) + b"\n\n")

    async def done(self) -> None:
        """Send ``data: [DONE]`` and end the response."""
        await self._body(b"data: [DONE]\n\n")
        await self.end()

    async def end(self) -> None:
        """End the event stream."""
        self.complete = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _body(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})


class GenerationResponse(Response):
    """An ASGI response that runs ``producer`` and cancels it if the client disconnects.

    Args:
        producer: coroutine function receiving a :class:`ResponseWriter`; it must answer through it.
        request_id: the request's id (logs and ``x-request-id``).
    """

    def __init__(self, producer: Producer, request_id: str) -> None:
        super().__init__()
        self._producer = producer
        self._request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = ResponseWriter(send, self._request_id)

        async def watch_disconnect(cancel_scope: anyio.CancelScope) -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    if not writer.complete:
                        log.info("request %s: client disconnected; cancelling it", self._request_id)
                        cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            try:
                await self._producer(writer)
            except Exception as exc:  # a bug in a producer: still answer, never leave the client hanging
                log.exception("request %s: internal error", self._request_id)
                await _internal_error(writer, exc)
            tg.cancel_scope.cancel()


async def _internal_error(writer: ResponseWriter, exc: Exception) -> None:
    body = {
        "error": {
            "message": f"internal error: {type(exc).__name__}: {exc}",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    if not writer.started:
        await writer.json(500, body)
    elif not writer.complete:
        await writer.event(body)
        await writer.end()
