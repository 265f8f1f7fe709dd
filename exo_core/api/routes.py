"""The OpenAI routes: ``POST /v1/chat/completions`` and ``POST /v1/completions``.

Both validate the body, resolve the model, then answer from a :class:`Generation` inside a
:class:`GenerationResponse` (so a client that leaves cancels the request). An error before the backend
accepted the request is an HTTP error status; an error in the middle of a stream is a final
``data: {"error": ...}`` event (no ``[DONE]`` follows it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from exo_core.api import formats
from exo_core.api.admission import Admission
from exo_core.api.backend import ChatBackend
from exo_core.api.errors import APIError
from exo_core.api.formats import ResponseMeta
from exo_core.api.generation import Generation
from exo_core.api.keys import client_of
from exo_core.api.metrics import Metrics
from exo_core.api.parsing import read_json_object, resolve_model, validate
from exo_core.api.responses import GenerationResponse, ResponseWriter
from exo_core.api.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("exo_core.api")


@dataclass(frozen=True)
class Limits:
    """Bounds of the API.

    Attributes:
        idle_timeout: longest wait (s) for the backend's next event before the request fails with 504.
        max_body_bytes: largest accepted request body.
        body_timeout: longest time (s) a request body may take to arrive (408 beyond).
        max_in_flight: requests generating at once (:class:`~exo_core.api.admission.Admission`).
        max_queued: requests waiting for a slot; beyond, 429 with ``Retry-After``.
        client_share: the fraction of the slots and of the queue one client may hold.
    """

    idle_timeout: float | None = 300.0
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout: float | None = 30.0
    max_in_flight: int = 8
    max_queued: int = 32
    client_share: float = 0.75


class OpenAIRoutes:
    """Handlers of the generating routes, bound to one backend."""

    def __init__(self, backend: ChatBackend, limits: Limits, metrics: Metrics | None = None) -> None:
        self._backend = backend
        self._limits = limits
        self._metrics = metrics
        self.admission = Admission(limits.max_in_flight, limits.max_queued, client_share=limits.client_share)

    async def _admitted(
        self, writer: ResponseWriter, request: Request, request_id: str, run: Callable[[], Awaitable[None]]
    ) -> None:
        """``run()`` inside an admission slot of the request's client; a 429 when the node is full."""
        try:
            async with self.admission.slot(request_id, client_of(request.scope)):
                await run()
        except APIError as exc:
            if writer.started:
                raise
            await _error_response(writer, request_id, exc)

    def _generation(
        self,
        request_id: str,
        model: str,
        *,
        chat: ChatCompletionRequest | None,
        completion: CompletionRequest | None,
    ) -> Generation:
        req = chat if chat is not None else completion
        assert req is not None
        return Generation(
            self._backend,
            request_id=request_id,
            model=model,
            messages=[m.to_backend() for m in chat.messages] if chat is not None else None,
            prompt=completion.prompt_text() if completion is not None else None,
            params=req.sampling(),
            stops=req.stop_strings(),
            idle_timeout=self._limits.idle_timeout,
            metrics=self._metrics,
        )

    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        body = await read_json_object(request, self._limits.max_body_bytes, self._limits.body_timeout)
        req = validate(ChatCompletionRequest, body)
        model = resolve_model(self._backend, req.model)
        request_id = uuid.uuid4().hex
        env = ResponseMeta(id=f"chatcmpl-{request_id}", created=int(time.time()), model=model)
        gen = self._generation(request_id, model, chat=req, completion=None)

        async def run(writer: ResponseWriter) -> None:
            async with gen:
                try:
                    await gen.start()
                except APIError as exc:
                    await _error_response(writer, request_id, exc)
                    return
                if req.streaming:
                    await _stream_chat(writer, gen, env, req)
                else:
                    await _complete_chat(writer, gen, env, req)

        async def produce(writer: ResponseWriter) -> None:
            await self._admitted(writer, request, request_id, lambda: run(writer))

        return GenerationResponse(produce, request_id)

    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions`` (raw prompt)."""
        body = await read_json_object(request, self._limits.max_body_bytes, self._limits.body_timeout)
        req = validate(CompletionRequest, body)
        model = resolve_model(self._backend, req.model)
        request_id = uuid.uuid4().hex
        env = ResponseMeta(id=f"cmpl-{request_id}", created=int(time.time()), model=model)
        gen = self._generation(request_id, model, chat=None, completion=req)

        async def run(writer: ResponseWriter) -> None:
            async with gen:
                try:
                    await gen.start()
                except APIError as exc:
                    await _error_response(writer, request_id, exc)
                    return
                await _run_completion(writer, gen, env, req)

        async def produce(writer: ResponseWriter) -> None:
            await self._admitted(writer, request, request_id, lambda: run(writer))

        return GenerationResponse(produce, request_id)


async def _error_response(writer: ResponseWriter, request_id: str, exc: APIError) -> None:
    level = logging.WARNING if exc.status < 500 else logging.ERROR
    log.log(level, "request %s -> %d %s", request_id, exc.status, exc.message)
    await writer.json(exc.status, exc.body(), exc.headers)


async def _stream_error(writer: ResponseWriter, request_id: str, exc: APIError) -> None:
    log.error("request %s failed mid-stream: %d %s", request_id, exc.status, exc.message)
    await writer.event(exc.body())
    await writer.end()


async def _stream_chat(
    writer: ResponseWriter, gen: Generation, env: ResponseMeta, req: ChatCompletionRequest
) -> None:
    usage_field = req.include_usage
    await writer.start_events()
    await writer.event(
        formats.chat_chunk(env, {"role": "assistant", "content": ""}, with_usage_field=usage_field)
    )
    try:
        while (piece := await gen.next_piece()) is not None:
            if not piece:
                continue
            logprobs = formats.chat_logprobs(piece.tokens) if gen.params.logprobs else None
            chunk = formats.chat_chunk(
                env, {"content": piece.text}, logprobs=logprobs, with_usage_field=usage_field
            )
            await writer.event(chunk)
    except APIError as exc:
        await _stream_error(writer, gen.request_id, exc)
        return
    await writer.event(
        formats.chat_chunk(env, {}, finish_reason=gen.finish_reason, with_usage_field=usage_field)
    )
    if usage_field:
        await writer.event(formats.usage_chunk(env, "chat.completion.chunk", gen.usage()))
    await writer.done()


async def _complete_chat(
    writer: ResponseWriter, gen: Generation, env: ResponseMeta, req: ChatCompletionRequest
) -> None:
    parts: list[str] = []
    tokens = []
    try:
        while (piece := await gen.next_piece()) is not None:
            parts.append(piece.text)
            tokens.extend(piece.tokens)
    except APIError as exc:
        await _error_response(writer, gen.request_id, exc)
        return
    assert gen.finish_reason is not None
    logprobs = formats.chat_logprobs(tokens) if gen.params.logprobs else None
    await writer.json(
        200, formats.chat_completion(env, "".join(parts), gen.finish_reason, gen.usage(), logprobs)
    )


async def _run_completion(
    writer: ResponseWriter, gen: Generation, env: ResponseMeta, req: CompletionRequest
) -> None:
    offsets = formats.CompletionLogprobs(start_offset=len(req.prompt_text()))
    want_logprobs = gen.params.logprobs
    if not req.streaming:
        parts: list[str] = []
        tokens = []
        try:
            while (piece := await gen.next_piece()) is not None:
                parts.append(piece.text)
                tokens.extend(piece.tokens)
        except APIError as exc:
            await _error_response(writer, gen.request_id, exc)
            return
        logprobs = offsets.block(tokens) if want_logprobs else None
        body = formats.text_completion(
            env, "".join(parts), finish_reason=gen.finish_reason, logprobs=logprobs, usage=gen.usage()
        )
        await writer.json(200, body)
        return
    usage_field = req.include_usage
    await writer.start_events()
    try:
        while (piece := await gen.next_piece()) is not None:
            if not piece:
                continue
            logprobs = offsets.block(piece.tokens) if want_logprobs else None
            chunk = formats.text_completion(
                env, piece.text, finish_reason=None, logprobs=logprobs, with_usage_field=usage_field
            )
            await writer.event(chunk)
    except APIError as exc:
        await _stream_error(writer, gen.request_id, exc)
        return
    last = formats.text_completion(
        env, "", finish_reason=gen.finish_reason, logprobs=None, with_usage_field=usage_field
    )
    await writer.event(last)
    if usage_field:
        await writer.event(formats.usage_chunk(env, "text_completion", gen.usage()))
    await writer.done()
