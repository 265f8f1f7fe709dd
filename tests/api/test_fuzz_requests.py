"""Fuzzing the OpenAI routes on a real uvicorn server: no input a client sends may yield a 5xx.

Hypothesis builds bodies over the request schema (every known field, with values of every JSON type and
out-of-range numbers, NaN and infinities included) and raw bytes, and sends them with assorted content
types. Every answer must be a 2xx or a 4xx in OpenAI's error shape, and the server must keep serving.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exo_core.api import create_app, serve_api

from .support import FakeBackend

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "", "USER"])
CONTENT = (
    st.text(max_size=40)
    | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": JSON}), max_size=3
    )
    | JSON
)
MESSAGE = st.fixed_dictionaries({"role": ROLES | JSON}, optional={"content": CONTENT, "name": JSON})
MESSAGES = st.lists(MESSAGE, max_size=3) | JSON
TOKEN_IDS = st.integers(min_value=-5, max_value=2**40).map(str) | st.text(max_size=6)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["fake-model", "other-model", "nope", ""]) | JSON,
    "max_tokens": st.integers(min_value=-3, max_value=2**66) | JSON,
    "max_completion_tokens": st.integers(min_value=-3, max_value=2**66) | JSON,
    "temperature": st.floats(allow_nan=True) | JSON,
    "top_p": st.floats(allow_nan=True) | JSON,
    "top_k": st.integers(min_value=-3, max_value=2**66) | JSON,
    "seed": st.integers(min_value=-(2**66), max_value=2**66) | JSON,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=300), max_size=20) | JSON,
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | JSON}) | JSON,
    "n": st.integers(min_value=-2, max_value=3) | JSON,
    "presence_penalty": st.floats(min_value=-3, max_value=3) | JSON,
    "frequency_penalty": st.floats(min_value=-3, max_value=3) | JSON,
    "logit_bias": st.dictionaries(TOKEN_IDS, st.floats(allow_nan=True) | JSON, max_size=4) | JSON,
    "logprobs": st.booleans() | st.integers(min_value=-2, max_value=30) | JSON,
    "top_logprobs": st.integers(min_value=-2, max_value=30) | JSON,
    "tools": JSON,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | JSON,
    "echo": JSON,
    "suffix": JSON,
    "user": JSON,
}
CHAT_BODY = st.fixed_dictionaries({"messages": MESSAGES}, optional=FIELDS)
COMPLETION_BODY = st.fixed_dictionaries({"prompt": st.text(max_size=30) | JSON}, optional=FIELDS)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json; charset=utf-8",
    ]
)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A real server over the fake backend, in its own thread and event loop (hypothesis tests are sync)."""
    ready = threading.Event()
    found: dict[str, Any] = {}
    stop: dict[str, Any] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            app = create_app(FakeBackend(), max_body_bytes=64 * 1024)
            found["port"] = await tg.start(serve_api, app, "127.0.0.1", 0)
            stop["scope"] = tg.cancel_scope
            stop["token"] = anyio.lowlevel.current_token()
            ready.set()

    thread = threading.Thread(target=anyio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(15), "the server did not start"
    yield f"http://127.0.0.1:{found['port']}"
    anyio.from_thread.run_sync(stop["scope"].cancel, token=stop["token"])
    thread.join(15)


def check(response: httpx.Response) -> None:
    event(f"status {response.status_code}")  # shown by pytest --hypothesis-show-statistics
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] in ("invalid_request_error", "permission_error", "rate_limit_error")


def post(url: str, path: str, content: bytes, content_type: str | None) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    with httpx.Client(base_url=url, timeout=20) as client:
        return client.post(path, content=content, headers=headers)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(body=CHAT_BODY, content_type=CONTENT_TYPES)
def test_fuzzed_chat_requests_never_yield_a_5xx(
    server_url: str, body: dict[str, Any], content_type: str
) -> None:
    check(post(server_url, "/v1/chat/completions", json.dumps(body).encode(), content_type))


VALID_MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}
    ),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(messages=VALID_MESSAGES, field=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_one_fuzzed_field_in_a_valid_chat_request_never_yields_a_5xx(
    server_url: str, messages: list[dict[str, str]], field: str, data: st.DataObject
) -> None:
    body = {"messages": messages, "max_tokens": 4, field: data.draw(FIELDS[field], label=field)}
    check(post(server_url, "/v1/chat/completions", json.dumps(body).encode(), "application/json"))


@FUZZ
@given(body=COMPLETION_BODY, content_type=CONTENT_TYPES)
def test_fuzzed_completion_requests_never_yield_a_5xx(
    server_url: str, body: dict[str, Any], content_type: str
) -> None:
    check(post(server_url, "/v1/completions", json.dumps(body).encode(), content_type))


@FUZZ
@given(
    raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
)
def test_fuzzed_raw_bodies_never_yield_a_5xx(server_url: str, raw: bytes, path: str) -> None:
    check(post(server_url, path, raw, "application/json"))


def test_the_server_still_serves_after_the_fuzzing(server_url: str) -> None:
    body = {"messages": [{"role": "user", "content": "still there?"}]}
    response = post(server_url, "/v1/chat/completions", json.dumps(body).encode(), "application/json")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: still there?"
