"""Every bad request gets the right 4xx in OpenAI's error format, and never reaches the backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from exo_core.api import BackendError

from .support import MODEL, FakeBackend, Script, running_api

MSG = [{"role": "user", "content": "hi"}]

CHAT_CASES: list[tuple[str, Any, str | None]] = [
    # (case, body, param the error must name)
    ("missing messages", {"model": MODEL}, "messages"),
    ("empty messages", {"messages": []}, "messages"),
    ("messages not a list", {"messages": "hi"}, "messages"),
    ("message not an object", {"messages": ["hi"]}, "messages[0]"),
    ("bad role", {"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
    ("tool role", {"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
    ("missing content", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("content wrong type", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        "image part",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0].type",
    ),
    ("max_tokens string", {"messages": MSG, "max_tokens": "ten"}, "max_tokens"),
    ("max_tokens float", {"messages": MSG, "max_tokens": 1.5}, "max_tokens"),
    ("max_tokens negative", {"messages": MSG, "max_tokens": -5}, "max_tokens"),
    ("max_tokens zero", {"messages": MSG, "max_tokens": 0}, "max_tokens"),
    (
        "max_completion_tokens negative",
        {"messages": MSG, "max_completion_tokens": -1},
        "max_completion_tokens",
    ),
    ("temperature string", {"messages": MSG, "temperature": "hot"}, "temperature"),
    ("seed beyond 64 bits", {"messages": MSG, "seed": 2**64}, "seed"),
    ("temperature bool", {"messages": MSG, "temperature": True}, "temperature"),
    ("temperature too high", {"messages": MSG, "temperature": 2.5}, "temperature"),
    ("temperature negative", {"messages": MSG, "temperature": -0.1}, "temperature"),
    ("top_p too high", {"messages": MSG, "top_p": 1.5}, "top_p"),
    ("top_k zero", {"messages": MSG, "top_k": 0}, "top_k"),
    ("seed string", {"messages": MSG, "seed": "42"}, "seed"),
    ("stream string", {"messages": MSG, "stream": "yes"}, "stream"),
    ("model not a string", {"messages": MSG, "model": 3}, "model"),
    ("stop wrong type", {"messages": MSG, "stop": 5}, "stop"),
    ("stop empty string", {"messages": MSG, "stop": [""]}, "stop"),
    ("too many stops", {"messages": MSG, "stop": [str(i) for i in range(17)]}, "stop"),
    ("n=2", {"messages": MSG, "n": 2}, "n"),
    ("top_logprobs too high", {"messages": MSG, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("top_logprobs without logprobs", {"messages": MSG, "top_logprobs": 2}, "top_logprobs"),
    ("tools", {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("functions", {"messages": MSG, "functions": [{"name": "f"}]}, "functions"),
    ("tool_choice without tools", {"messages": MSG, "tool_choice": "auto"}, "tool_choice"),
    (
        "stream_options without stream",
        {"messages": MSG, "stream_options": {"include_usage": True}},
        "stream_options",
    ),
    (
        "json response_format",
        {"messages": MSG, "response_format": {"type": "json_object"}},
        "response_format",
    ),
    ("presence_penalty out of range", {"messages": MSG, "presence_penalty": 3}, "presence_penalty"),
]

COMPLETION_CASES: list[tuple[str, Any, str | None]] = [
    ("missing prompt", {"model": MODEL}, "prompt"),
    ("prompt of token ids", {"prompt": [1, 2, 3]}, "prompt[0]"),
    ("two prompts", {"prompt": ["a", "b"]}, "prompt"),
    ("logprobs bool", {"prompt": "a", "logprobs": True}, "logprobs"),
    ("logprobs negative", {"prompt": "a", "logprobs": -1}, "logprobs"),
    ("echo", {"prompt": "a", "echo": True}, "echo"),
    ("suffix", {"prompt": "a", "suffix": "z"}, "suffix"),
    ("best_of", {"prompt": "a", "best_of": 3}, "best_of"),
    (
        "stream_options without stream",
        {"prompt": "a", "stream_options": {"include_usage": True}},
        "stream_options",
    ),
    ("max_tokens negative", {"prompt": "a", "max_tokens": -1}, "max_tokens"),
]


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[tuple[str, FakeBackend]]:
    """One server for the many table-driven cases (none of them may reach the backend)."""
    backend = FakeBackend()
    async with running_api(backend) as url:
        yield url, backend


@pytest.fixture
async def bad_client(shared: tuple[str, FakeBackend]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=shared[0], timeout=10.0) as c:
        yield c


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


@pytest.mark.parametrize(("case", "body", "param"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
async def test_bad_chat_request_is_400(
    bad_client: httpx.AsyncClient, shared: tuple[str, FakeBackend], case: str, body: Any, param: str | None
) -> None:
    response = await bad_client.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, 400, param)
    if param is not None:
        assert error["message"].startswith(param)
    assert shared[1].calls == []


@pytest.mark.parametrize(("case", "body", "param"), COMPLETION_CASES, ids=[c[0] for c in COMPLETION_CASES])
async def test_bad_completion_request_is_400(
    bad_client: httpx.AsyncClient, shared: tuple[str, FakeBackend], case: str, body: Any, param: str | None
) -> None:
    assert_openai_error(await bad_client.post("/v1/completions", json=body), 400, param)
    assert shared[1].calls == []


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"messages": [', "could not parse the JSON body"),
        (b"not json", "could not parse the JSON body"),
        (b"\xff\xfe", "could not parse the JSON body"),
        (b"", "empty request body"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"messages": [{"role": "user", "content": "a\\ud800"}]}', "lone surrogate"),
        (b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
async def test_bad_json_is_400(
    bad_client: httpx.AsyncClient, shared: tuple[str, FakeBackend], raw: bytes, fragment: str
) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        response = await bad_client.post(path, content=raw, headers={"content-type": "application/json"})
        assert fragment in assert_openai_error(response, 400)["message"]
    assert shared[1].calls == []


async def test_form_encoded_json_is_accepted_like_curl_d(client: httpx.AsyncClient) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}]}'
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert (
        response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "You said: hi"
    )


async def test_a_trailing_slash_is_served_not_redirected(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions/", json={"messages": MSG})
    assert (
        response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "You said: hi"
    )
    assert (await client.get("/v1/models/")).status_code == 200
    assert (await client.get("/")).status_code == 200


async def test_unknown_model_is_404(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    for path, body in (("/v1/chat/completions", {"messages": MSG}), ("/v1/completions", {"prompt": "x"})):
        error = assert_openai_error(await client.post(path, json={**body, "model": "nope"}), 404, "model")
        assert error["code"] == "model_not_found" and MODEL in error["message"]
    assert backend.calls == []


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/embeddings"), 404)
    assert_openai_error(await client.get("/v1/chat/completions"), 405)
    assert_openai_error(await client.post("/v1/models", json={}), 405)


async def test_body_too_large_is_413() -> None:
    backend = FakeBackend()
    async with running_api(backend, max_body_bytes=1000) as url, httpx.AsyncClient(base_url=url) as client:
        big = {"messages": [{"role": "user", "content": "x" * 2000}]}
        error = assert_openai_error(await client.post("/v1/chat/completions", json=big), 413)
        assert "1000 bytes" in error["message"]
        ok = await client.post("/v1/chat/completions", json={"messages": MSG})
        assert ok.status_code == 200
    assert len(backend.calls) == 1


async def test_api_key() -> None:
    backend = FakeBackend()
    async with running_api(backend, api_key="s3cret") as url, httpx.AsyncClient(base_url=url) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            for method, path in (
                ("POST", "/v1/chat/completions"),
                ("GET", "/v1/models"),
                ("GET", "/v1/topology"),
            ):
                response = await client.request(method, path, json={"messages": MSG}, headers=headers)
                error = assert_openai_error(response, 401)
                assert error["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"] == "Bearer"
        assert backend.calls == []
        good = {"authorization": "Bearer s3cret"}
        assert (
            await client.post("/v1/chat/completions", json={"messages": MSG}, headers=good)
        ).status_code == 200
        assert (await client.get("/v1/models", headers=good)).status_code == 200
        # the health check and the page (which asks for the key) stay open
        assert (await client.get("/healthcheck")).status_code == 200
        assert (await client.get("/")).status_code == 200

        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="s3cret", max_retries=0, timeout=10
        ) as sdk:
            resp = await sdk.chat.completions.create(model=MODEL, messages=MSG)
            assert resp.choices[0].message.content == "You said: hi"
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0, timeout=10) as sdk:
            with pytest.raises(openai.AuthenticationError):
                await sdk.models.list()


async def test_a_503_from_the_backend_says_when_to_retry() -> None:
    refusal = BackendError(503, "draining", "node a is shutting down: send the request to another node")
    backend = FakeBackend(lambda call: Script(tokens=[], error_before_start=refusal))
    async with running_api(backend) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json={"messages": MSG})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "draining"
