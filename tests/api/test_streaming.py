"""The event-stream format, errors mid-stream, cancellation on client disconnect, timeouts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from exo_core.api import BackendError, BackendEvent, Started, TokenEvent

from .support import MODEL, OTHER_MODEL, REMOTE_MODEL, Call, FakeBackend, Script, running_api, wait_closed

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
LONG = Script(tokens=[f" t{i}" for i in range(2000)], delay=0.02)


async def read_events(response: httpx.Response) -> list[str]:
    """The data fields of a complete event stream, checking the framing."""
    raw = (await response.aread()).decode()
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, event
    return [event[len("data: ") :] for event in events]


async def test_chat_event_stream_format(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        data = await read_events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{response.headers['x-request-id']}"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage


async def test_completion_event_stream_format(client: httpx.AsyncClient) -> None:
    body = {"prompt": "x", "stream": True, "logprobs": 1}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        data = await read_events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert "".join(texts) == " and then x"
    offsets = [o for c in chunks[:-1] for o in c["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == [1, 5, 10]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_error_mid_stream_is_a_final_error_event(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    lost = BackendError(502, "peer_lost", "node node-b went away; retry")
    backend.script_for = lambda call: Script(tokens=["a", "b", "c"], error_after=1, error=lost)
    async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        assert response.status_code == 200
        data = await read_events(response)
    assert "[DONE]" not in data
    assert json.loads(data[-1]) == {
        "error": {
            "message": "node node-b went away; retry",
            "type": "server_error",
            "param": None,
            "code": "peer_lost",
        }
    }
    assert json.loads(data[1])["choices"][0]["delta"]["content"] == "a"
    assert backend.calls[0].closed.is_set()


class _Broken(FakeBackend):
    """A backend with bugs: raises a plain exception, or ends without Finished."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def generate(self, **kwargs: Any) -> AsyncIterator[BackendEvent]:
        return self._broken()

    async def _broken(self) -> AsyncIterator[BackendEvent]:
        yield Started(prompt_tokens=1)
        yield TokenEvent(1, "partial")
        if self.mode == "raise":
            raise ZeroDivisionError("oops")


@pytest.mark.parametrize(
    ("mode", "status", "code"), [("raise", 500, "internal_error"), ("end", 502, "internal_error")]
)
async def test_backend_bugs_become_errors_not_hangs(mode: str, status: int, code: str) -> None:
    async with running_api(_Broken(mode)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert response.status_code == status and response.json()["error"]["code"] == code
        async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
            data = await read_events(response)
        assert json.loads(data[-1])["error"]["code"] == code


async def test_client_disconnect_mid_stream_cancels_the_backend(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script_for = lambda call: LONG
    async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen == 4:
                break
    (call,) = backend.calls
    await wait_closed(call)
    assert not call.completed and call.yielded < 100


async def test_client_disconnect_without_streaming_cancels_the_backend(
    api_url: str, backend: FakeBackend
) -> None:
    backend.script_for = lambda call: LONG
    body = json.dumps({"messages": CHAT["messages"]}).encode()
    port = int(api_url.rsplit(":", 1)[1])
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as sock:
            head = "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            head += f"content-length: {len(body)}\r\n\r\n"
            await sock.send(head.encode() + body)
            call = await backend.first_call()
            await call.wait_yielded(3)
    await wait_closed(call)
    assert not call.completed


async def test_idle_timeout_cancels_a_silent_backend() -> None:
    backend = FakeBackend(lambda call: Script(tokens=["a", "b"], delay=30))
    async with (
        running_api(backend, idle_timeout=0.3) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
            data = await read_events(response)
        assert json.loads(data[-1])["error"]["code"] == "timeout"
    assert all(call.closed.is_set() for call in backend.calls) and len(backend.calls) == 2


async def test_a_prompt_that_makes_progress_is_not_cut_by_the_idle_timeout() -> None:
    """Progress events (a long prompt's prefill advancing) each open a new idle window: 8 of them 0.2 s
    apart outlast a 0.3 s idle timeout that a silent backend would hit."""
    backend = FakeBackend(lambda call: Script(tokens=[" done"], delay=0.2, progress=8))
    async with (
        running_api(backend, idle_timeout=0.3) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == " done"


async def test_concurrent_streams_do_not_mix(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    def script(call: Call) -> Script:
        assert call.messages is not None
        return Script(tokens=[f" {call.messages[0]['content']}-{i}" for i in range(20)], delay=0.005)

    backend.script_for = script
    results: dict[int, str] = {}

    async def one(n: int) -> None:
        body = {"messages": [{"role": "user", "content": f"r{n}"}], "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            data = await read_events(response)
        results[n] = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-1])

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(one, n)
    assert results == {n: "".join(f" r{n}-{i}" for i in range(20)) for n in range(8)}


async def test_healthcheck_and_topology(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    response = await client.get("/healthcheck")
    assert response.status_code == 200 and response.json() == backend.health()  # passed on as it is
    backend.healthy = False
    response = await client.get("/healthcheck")
    assert response.status_code == 503 and response.json()["status"] == "degraded"
    topology = (await client.get("/v1/topology")).json()
    assert topology == backend.topology_data
    assert [s["node_id"] for s in topology["plan"]["shards"]] == ["node-a", "node-b"]


async def test_page_and_static_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    for name, kind in (("app.js", "javascript"), ("markdown.js", "javascript"), ("style.css", "text/css")):
        response = await client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "content-security-policy" in response.headers
    assert (await client.get("/static/missing.js")).status_code == 404
    assert (await client.get("/static/../app.py")).status_code == 404


async def test_models_endpoint_shape(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert body["data"][0] == {
        "id": MODEL,
        "object": "model",
        "created": 0,
        "owned_by": "exo",
        "context_length": 2048,
    }


async def test_models_needing_a_download_are_listed_only_when_asked(client: httpx.AsyncClient) -> None:
    """Model pickers show what the cluster can serve now; ``?all=true`` adds the ones a request would have
    to download first, marked so."""
    listed = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert listed == [MODEL, OTHER_MODEL]
    every = {m["id"]: m for m in (await client.get("/v1/models", params={"all": "true"})).json()["data"]}
    assert list(every) == [MODEL, OTHER_MODEL, REMOTE_MODEL]
    assert every[REMOTE_MODEL]["needs_download"] is True
    assert "needs_download" not in every[MODEL]
    one = (await client.get(f"/v1/models/{REMOTE_MODEL}")).json()
    assert one["id"] == REMOTE_MODEL and one["needs_download"] is True
