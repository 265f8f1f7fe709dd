"""The official ``openai`` SDK against a real node (a separate ``exo`` process on loopback)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from exo_core.nodeproc import NodeProcess

from .support import PROMPTS, no_peers

pytestmark = pytest.mark.timeout(180)


def test_sdk_streamed_and_non_streamed(
    exo_node: Callable[..., NodeProcess], tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    node = exo_node(*no_peers(tmp_path, "solo"))
    client = openai.OpenAI(base_url=node.api + "/v1", api_key="unused", timeout=120, max_retries=0)
    try:
        assert client.models.list().data[0].id == "smollm2-135m"
        prompt = PROMPTS[0]
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
        done = client.chat.completions.create(
            model="smollm2-135m", messages=messages, max_tokens=20, temperature=0
        )
        assert done.choices[0].message.content == "".join(reference[prompt])
        assert done.usage is not None and done.usage.completion_tokens == len(reference[prompt])

        chunks = list(
            client.chat.completions.create(
                model="smollm2-135m", messages=messages, max_tokens=20, temperature=0, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == done.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason

        with pytest.raises(openai.NotFoundError, match=r"model 'no-such-model' not found"):
            client.chat.completions.create(model="no-such-model", messages=messages)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="smollm2-135m", messages=messages, temperature=7)
    finally:
        client.close()
