"""The official openai SDK against a real uvicorn server over the fake backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from exo_core.api import BackendError

from .support import MODEL, OTHER_MODEL, FakeBackend, Script

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def sdk(api_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{api_url}/v1", api_key="unused", max_retries=0, timeout=10) as c:
        yield c


async def test_non_streamed_chat(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    resp = await sdk.chat.completions.create(
        model=MODEL, messages=USER, temperature=0.0, top_p=0.5, seed=7, max_tokens=50
    )
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: hello there"
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (7, 4, 11)
    (call,) = backend.calls
    assert call.messages == [{"role": "user", "content": "hello there"}] and call.prompt is None
    p = call.params
    assert (p.temperature, p.top_p, p.seed, p.max_tokens, p.logprobs) == (0.0, 0.5, 7, 50, False)
    assert resp.id == f"chatcmpl-{call.request_id}"
    assert call.completed and call.closed.is_set()


async def test_streamed_chat_with_usage(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "You said: hello there"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "stop"
    assert finishing[0] is chunks[-2]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 4 and usage_chunk.usage.prompt_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


async def test_default_model_and_system_and_developer_roles(
    sdk: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "system",
            "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "again", "name": "bob"},
    ]
    # the SDK requires `model`; "" lets the server pick its default
    resp = await sdk.chat.completions.create(model="", messages=messages)
    assert resp.model == MODEL
    assert backend.calls[0].messages == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "part one\ntwo"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "again", "name": "bob"},
    ]


async def test_max_tokens_gives_finish_reason_length(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    resp = await sdk.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    assert resp.choices[0].message.content == "You said:"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 2
    # max_completion_tokens is the newer name and wins
    resp = await sdk.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=2, max_completion_tokens=3
    )
    assert resp.choices[0].message.content == "You said: hello"
    assert backend.calls[-1].params.max_tokens == 3


async def test_chat_logprobs(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    resp = await sdk.chat.completions.create(model=MODEL, messages=USER, logprobs=True, top_logprobs=3)
    assert backend.calls[0].params.logprobs and backend.calls[0].params.top_logprobs == 3
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == ["You", " said:", " hello", " there"]
    assert lp.content[1].logprob == pytest.approx(-0.26)
    assert lp.content[1].bytes == list(b" said:")
    assert [a.token for a in lp.content[0].top_logprobs] == ["You", "alt1", "alt2"]

    stream = await sdk.chat.completions.create(model=MODEL, messages=USER, logprobs=True, stream=True)
    tokens = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            tokens += [(t.token, t.top_logprobs) for t in chunk.choices[0].logprobs.content]
    assert [t for t, _ in tokens] == ["You", " said:", " hello", " there"]
    assert all(top == [] for _, top in tokens)


async def test_stop_strings_split_across_deltas(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    backend.script_for = lambda call: Script(
        tokens=["The answer", " is 4", "2.", " ST", "OP", " ignored", " more"]
    )
    resp = await sdk.chat.completions.create(model=MODEL, messages=USER, stop="STOP")
    assert resp.choices[0].message.content == "The answer is 42. "
    assert resp.choices[0].finish_reason == "stop"
    call = backend.calls[-1]
    assert call.closed.is_set() and not call.completed
    assert call.yielded == 5  # closed right after "OP": the rest was never generated

    stream = await sdk.chat.completions.create(model=MODEL, messages=USER, stop=["nope", "S"], stream=True)
    deltas = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == "The answer is 42. "
    assert backend.calls[-1].closed.is_set() and not backend.calls[-1].completed


async def test_completions_non_streamed_and_streamed(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    resp = await sdk.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, logprobs=2)
    call = backend.calls[-1]
    assert call.prompt == "Once upon" and call.messages is None
    assert call.params.max_tokens == 10 and call.params.logprobs and call.params.top_logprobs == 2
    assert resp.object == "text_completion"
    choice = resp.choices[0]
    assert choice.text == " and then Once upon"
    assert choice.finish_reason == "stop"
    assert choice.logprobs is not None
    assert choice.logprobs.tokens == [" and", " then", " Once", " upon"]
    assert choice.logprobs.text_offset == [9, 13, 18, 23]  # offsets in prompt + completion
    assert choice.logprobs.top_logprobs is not None and list(choice.logprobs.top_logprobs[0]) == [
        " and",
        "alt1",
    ]
    assert resp.usage is not None and resp.usage.completion_tokens == 4

    stream = await sdk.completions.create(
        model=MODEL, prompt=["Once upon"], stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " and then Once upon"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 11
    assert backend.calls[-1].params.max_tokens == 16  # OpenAI's default for completions


async def test_models(sdk: openai.AsyncOpenAI) -> None:
    page = await sdk.models.list()
    assert [m.id for m in page.data] == [MODEL, OTHER_MODEL]  # the default first
    assert all(m.object == "model" and m.owned_by == "exo" for m in page.data)
    model = await sdk.models.retrieve(OTHER_MODEL)
    assert model.id == OTHER_MODEL and model.created == 1
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("missing")


async def test_unknown_model_is_404(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="gpt-9", messages=USER)
    assert info.value.code == "model_not_found"
    assert "fake-model" in info.value.message
    assert backend.calls == []


async def test_backend_error_before_start_is_an_http_error(
    sdk: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.script_for = lambda call: Script(
        tokens=[], error_before_start=BackendError(503, "no_capacity", "full")
    )
    with pytest.raises(openai.APIStatusError) as info:
        await sdk.chat.completions.create(model=MODEL, messages=USER, stream=True)
    assert info.value.status_code == 503 and info.value.code == "no_capacity"
    backend.script_for = lambda call: Script(
        tokens=[], error_before_start=BackendError(404, "model_not_found", "x")
    )
    with pytest.raises(openai.NotFoundError):
        await sdk.completions.create(model=MODEL, prompt="x")


async def test_error_mid_stream_raises_in_the_sdk(sdk: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    lost = BackendError(502, "peer_lost", "node node-b went away")
    backend.script_for = lambda call: Script(tokens=["a", "b", "c"], error_after=2, error=lost)
    stream = await sdk.chat.completions.create(model=MODEL, messages=USER, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="node node-b went away"):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "a", "b"]
    # non-streamed: the status of the error
    with pytest.raises(openai.APIStatusError) as info:
        await sdk.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 502
