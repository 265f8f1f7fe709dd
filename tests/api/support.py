"""An in-memory fake ChatBackend (it isolates the API module) and a real uvicorn server on loopback."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from exo_core.api import (
    BackendError,
    BackendEvent,
    Finished,
    FinishReason,
    ModelInfo,
    Progress,
    SamplingParams,
    Started,
    TokenEvent,
    create_app,
    serve_api,
)

MODEL = "fake-model"
OTHER_MODEL = "other-model"
#: a model the fake cluster could serve only after a download
REMOTE_MODEL = "hub-only-model"


@dataclass
class Script:
    """What the fake answers to one request."""

    tokens: list[str]
    finish: FinishReason = "stop"
    delay: float = 0.0  # seconds before each token
    prompt_tokens: int = 7
    error_before_start: BackendError | None = None
    error_after: int | None = None  # raise `error` after this many tokens
    error: BackendError | None = None
    progress: int = 0  # Progress events before the first token, ``delay`` apart


@dataclass
class Call:
    """One generate() call as the fake saw it."""

    request_id: str
    model: str
    messages: list[dict[str, Any]] | None
    prompt: str | None
    params: SamplingParams
    yielded: int = 0  # tokens handed out
    completed: bool = False  # reached its Finished event
    closed: anyio.Event = field(default_factory=anyio.Event)  # generator finalized (any reason)
    _progress: anyio.Event = field(default_factory=anyio.Event)

    def token_sent(self) -> None:
        self.yielded += 1
        self._progress.set()
        self._progress = anyio.Event()

    async def wait_yielded(self, n: int) -> None:
        """Wait until ``n`` tokens were handed out (callers bound it with fail_after)."""
        while self.yielded < n:
            await self._progress.wait()


def words(text: str) -> list[str]:
    """Split text into token-like pieces that concatenate back to it."""
    return re.findall(r"\s*\S+|\s+$", text)


def default_script(call: Call) -> Script:
    """Echo the last user message (or the prompt)."""
    if call.messages:
        text = f"You said: {call.messages[-1]['content']}"
    else:
        text = f" and then {call.prompt}"
    return Script(tokens=words(text))


class FakeBackend:
    """A scripted ChatBackend: answers each request from ``script_for(call)`` and records every call."""

    def __init__(self, script_for: Callable[[Call], Script] = default_script) -> None:
        self.script_for = script_for
        self.calls: list[Call] = []
        self._new_call = anyio.Event()
        self.healthy = True
        self.topology_data: dict[str, Any] = {
            "node_id": "node-a",
            "nodes": [
                {
                    "id": "node-a",
                    "chip": "Fake Chip A",
                    "memory_mb": 16384,
                    "flops": {"fp32": 1.5},
                    "is_self": True,
                },
                {"id": "node-b", "chip": "Fake Chip B", "memory_mb": 8192, "flops": {"fp32": 0.5}},
            ],
            "connections": [{"a": "node-a", "b": "node-b"}],
            "plan": {
                "model": MODEL,
                "n_layers": 30,
                "shards": [
                    {"node_id": "node-a", "first_layer": 0, "last_layer": 19},
                    {"node_id": "node-b", "first_layer": 20, "last_layer": 29},
                ],
            },
        }

    async def first_call(self) -> Call:
        """The first generate() call, once there is one (callers bound it with fail_after)."""
        while not self.calls:
            await self._new_call.wait()
        return self.calls[0]

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(OTHER_MODEL, created=1),
            ModelInfo(MODEL, extra={"context_length": 2048}),
            ModelInfo(REMOTE_MODEL, ready=False),
        ]

    def default_model(self) -> str:
        return MODEL

    def topology(self) -> dict[str, Any]:
        return self.topology_data

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "degraded",
            "peers": 1,
            "weights_bytes": 111_600_000,
            "kv_cache_bytes": 4096,
            "peer_ids": ['node-"b"'],
            "peer_rtt_seconds": {'node-"b"': 0.00125},
        }

    def generate(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]] | None,
        prompt: str | None,
        params: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[BackendEvent]:
        call = Call(request_id, model, messages, prompt, params)
        self.calls.append(call)
        self._new_call.set()
        self._new_call = anyio.Event()
        return self._run(call, self.script_for(call))

    async def _run(self, call: Call, script: Script) -> AsyncIterator[BackendEvent]:
        try:
            if script.error_before_start is not None:
                raise script.error_before_start
            yield Started(prompt_tokens=script.prompt_tokens)
            for i in range(script.progress):
                await anyio.sleep(script.delay)
                yield Progress(i + 1, script.progress)
            tokens = script.tokens
            finish = script.finish
            if call.params.max_tokens is not None and len(tokens) > call.params.max_tokens:
                tokens, finish = tokens[: call.params.max_tokens], "length"
            for i, text in enumerate(tokens):
                if script.error_after is not None and i == script.error_after:
                    assert script.error is not None
                    raise script.error
                if script.delay:
                    await anyio.sleep(script.delay)
                call.token_sent()
                yield self._token(i, text, call.params)
            call.completed = True
            yield Finished(finish)
        finally:
            call.closed.set()

    @staticmethod
    def _token(i: int, text: str, params: SamplingParams) -> TokenEvent:
        if not params.logprobs:
            return TokenEvent(token_id=100 + i, text=text)
        logprob = -0.25 - i / 100
        alts = [(text, logprob)] + [(f"alt{j}", logprob - j) for j in range(1, params.top_logprobs)]
        return TokenEvent(100 + i, text, logprob=logprob, top_logprobs=alts[: params.top_logprobs])


@asynccontextmanager
async def running_api(backend: FakeBackend, **app_options: Any) -> AsyncIterator[str]:
    """Serve ``create_app(backend, **app_options)`` with uvicorn on a free loopback port; yields its URL."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_api, create_app(backend, **app_options), "127.0.0.1", 0)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def wait_closed(call: Call, *, within: float = 5.0) -> None:
    """Wait until the fake's generator for ``call`` was finalized; fails after ``within`` seconds."""
    with anyio.fail_after(within):
        await call.closed.wait()
