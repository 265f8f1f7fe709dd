"""One backend request as the routes see it: events in, releasable text out.

:class:`Generation` drives a :meth:`ChatBackend.generate` iterator: it waits for :class:`Started`, counts
tokens, applies stop strings, bounds every wait, turns every failure into an :class:`APIError`, and
closes the backend iterator (shielded, time-bounded) as soon as the answer is complete or abandoned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import anyio

from exo_core.api.backend import (
    BackendError,
    BackendEvent,
    ChatBackend,
    Finished,
    FinishReason,
    Progress,
    Started,
    TokenEvent,
)
from exo_core.api.errors import APIError
from exo_core.api.metrics import Metrics
from exo_core.api.stops import Released, StopFilter
from exo_core.params import SamplingParams

log = logging.getLogger("exo_core.api")

#: How long closing a backend iterator may take before the API gives up waiting for it.
CLOSE_TIMEOUT = 5.0


class Generation:
    """Async context manager around one ``generate`` call.

    Args:
        backend: the backend.
        request_id: the request's id.
        model: the (already checked) model id.
        messages: chat messages, or ``None`` for a raw completion.
        prompt: the raw prompt, or ``None`` for a chat.
        params: sampling parameters.
        stops: stop strings.
        idle_timeout: longest wait for any one event from the backend (``None``: unbounded).
        metrics: where the ended generation is counted (``GET /metrics``), if anywhere.

    Usage::

        async with Generation(...) as gen:
            await gen.start()                      # APIError here: answer with an HTTP error
            while (piece := await gen.next_piece()) is not None:
                ...                                # send piece.text / piece.tokens
            gen.finish_reason, gen.usage()
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        request_id: str,
        model: str,
        messages: list[dict[str, Any]] | None,
        prompt: str | None,
        params: SamplingParams,
        stops: Sequence[str],
        idle_timeout: float | None,
        metrics: Metrics | None = None,
    ) -> None:
        self._backend = backend
        self.request_id = request_id
        self.model = model
        self._messages = messages
        self._prompt = prompt
        self.params = params
        self._filter = StopFilter(stops)
        self._idle_timeout = idle_timeout
        self._it: AsyncIterator[BackendEvent] | None = None
        self._peeked: BackendEvent | None = None
        self._closed = False
        self._t0 = time.monotonic()
        self._metrics = metrics
        self._first_token_at: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    async def __aenter__(self) -> Generation:
        log.info(
            "request %s: model %s, %s, params %s",
            self.request_id,
            self.model,
            "chat" if self._messages is not None else "completion",
            self.params,
        )
        try:
            self._it = self._backend.generate(
                model=self.model,
                messages=self._messages,
                prompt=self._prompt,
                params=self.params,
                request_id=self.request_id,
            )
        except BackendError as exc:
            self._closed = True
            raise APIError.from_backend(exc) from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._metrics is not None:
            failed = isinstance(exc, APIError)
            self._metrics.generation_ended(
                reason=self.finish_reason or ("error" if failed else "cancelled"),
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                ttft=None if self._first_token_at is None else self._first_token_at - self._t0,
                seconds=time.monotonic() - self._t0,
            )
        if self.finish_reason is None:
            why = "cancelled (client gone or server stopping)" if exc_type is not None else "abandoned"
            if isinstance(exc, APIError):
                why = f"failed: {exc.status} {exc.message}"
            log.info("request %s %s after %d tokens", self.request_id, why, self.completion_tokens)
        else:
            log.info(
                "request %s finished (%s): %d prompt + %d completion tokens in %.2f s",
                self.request_id,
                self.finish_reason,
                self.prompt_tokens,
                self.completion_tokens,
                time.monotonic() - self._t0,
            )
        await self.aclose()

    async def start(self) -> None:
        """Wait until the backend accepted the request (its :class:`Started`).

        Raises:
            APIError: the backend refused the request (unknown model, no capacity, ...).
        """
        event = await self._next_event()
        if isinstance(event, Started):
            self.prompt_tokens = event.prompt_tokens
        else:
            log.warning(
                "request %s: backend sent %r before Started; counting 0 prompt tokens", self.request_id, event
            )
            self._peeked = event

    async def next_piece(self) -> Released | None:
        """The next text (and tokens) to send, or ``None`` once the answer is complete.

        A returned piece may be empty (nothing to send this time). When ``None`` is returned,
        :attr:`finish_reason` is set and the backend iterator is closed.

        Raises:
            APIError: the backend failed or went silent for longer than the idle timeout.
        """
        while self.finish_reason is None:
            event = await self._next_event()
            if isinstance(event, TokenEvent):
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                self.completion_tokens += 1
                released = self._filter.feed(event)
                if self._filter.stopped:
                    log.debug("request %s: stop string %r reached", self.request_id, self._filter.stop_string)
                    self.finish_reason = "stop"
                    await self.aclose()
                    return released
                if released:
                    return released
            elif isinstance(event, Finished):
                self.finish_reason = event.reason
                await self.aclose()
                return self._filter.flush()
            else:
                log.warning("request %s: backend sent a second Started; ignored", self.request_id)
        return None

    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    async def aclose(self) -> None:
        """Close the backend iterator (cancels the request on every node); idempotent, shielded, bounded."""
        if self._closed or self._it is None:
            self._closed = True
            return
        self._closed = True
        aclose = getattr(self._it, "aclose", None)
        if aclose is None:
            return
        with anyio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
            try:
                await aclose()
            except Exception:
                log.exception("request %s: closing the backend stream failed", self.request_id)
        if scope.cancelled_caught:
            log.error(
                "request %s: backend took more than %s s to close the request", self.request_id, CLOSE_TIMEOUT
            )

    async def _next_event(self) -> BackendEvent:
        if self._peeked is not None:
            event, self._peeked = self._peeked, None
            return event
        assert self._it is not None, "Generation used outside 'async with'"
        try:
            while True:  # each event, PROGRESS included, opens a new idle window
                with anyio.fail_after(self._idle_timeout):
                    event = await anext(self._it)
                if not isinstance(event, Progress):
                    return event
        except StopAsyncIteration:
            raise APIError(
                502,
                f"the backend ended request {self.request_id} without finishing it",
                code="internal_error",
            ) from None
        except BackendError as exc:
            raise APIError.from_backend(exc) from exc
        except TimeoutError:
            raise APIError(
                504,
                f"no progress for {self._idle_timeout} s; request {self.request_id} cancelled",
                code="timeout",
            ) from None
        except Exception as exc:
            log.exception("request %s: backend failed", self.request_id)
            raise APIError(
                500, f"internal error in the backend: {type(exc).__name__}: {exc}", code="internal_error"
            ) from exc
