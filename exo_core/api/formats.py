"""OpenAI's response objects: chat completions, chat chunks, text completions, logprobs, models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exo_core.api.backend import ModelInfo, TokenEvent


@dataclass(frozen=True)
class ResponseMeta:
    """The fields every object of one response shares."""

    id: str
    created: int
    model: str

    def base(self, obj: str) -> dict[str, Any]:
        """``{"id", "object", "created", "model"}``."""
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(tokens: Sequence[TokenEvent]) -> dict[str, Any]:
    """Chat-format ``logprobs``: ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}], ...}``."""
    content = [
        {
            "token": t.text,
            "logprob": t.logprob if t.logprob is not None else 0.0,
            "bytes": _bytes(t.text),
            "top_logprobs": [
                {"token": alt, "logprob": lp, "bytes": _bytes(alt)} for alt, lp in (t.top_logprobs or [])
            ],
        }
        for t in tokens
    ]
    return {"content": content, "refusal": None}


def chat_chunk(
    env: ResponseMeta,
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with a single choice."""
    chunk = env.base("chat.completion.chunk")
    chunk["system_fingerprint"] = None
    chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
    if with_usage_field:
        chunk["usage"] = None
    return chunk


def usage_chunk(env: ResponseMeta, obj: str, usage: dict[str, int]) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage``: no choices, only ``usage``."""
    chunk = env.base(obj)
    if obj == "chat.completion.chunk":
        chunk["system_fingerprint"] = None
    chunk["choices"] = []
    chunk["usage"] = usage
    return chunk


def chat_completion(
    env: ResponseMeta, text: str, finish_reason: str, usage: dict[str, int], logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    """A non-streamed ``chat.completion``."""
    body = env.base("chat.completion")
    body["system_fingerprint"] = None
    body["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
    ]
    body["usage"] = usage
    return body


class CompletionLogprobs:
    """Legacy completions ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).

    Offsets count characters of prompt + completion, as OpenAI's do.

    Args:
        start_offset: the offset of the completion's first character (the prompt's length).
    """

    def __init__(self, start_offset: int) -> None:
        self._offset = start_offset

    def block(self, tokens: Sequence[TokenEvent]) -> dict[str, Any]:
        """The ``logprobs`` object for these tokens (consecutive calls continue the offsets)."""
        offsets = []
        for t in tokens:
            offsets.append(self._offset)
            self._offset += len(t.text)
        return {
            "tokens": [t.text for t in tokens],
            "token_logprobs": [t.logprob if t.logprob is not None else 0.0 for t in tokens],
            "top_logprobs": [_with_sampled(t) for t in tokens],
            "text_offset": offsets,
        }


def _with_sampled(t: TokenEvent) -> dict[str, float]:
    """A token's ``top_logprobs`` with the sampled token in it (as OpenAI's legacy completions: up to
    ``logprobs + 1`` entries when the sampled token is not among the most likely)."""
    top = dict(t.top_logprobs or [])
    if t.top_logprobs and t.text not in top and t.logprob is not None:
        top[t.text] = t.logprob
    return top


def text_completion(
    env: ResponseMeta,
    text: str,
    *,
    finish_reason: str | None,
    logprobs: dict[str, Any] | None,
    usage: dict[str, int] | None = None,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    """A ``text_completion`` object (a whole answer, or one streamed chunk when ``usage`` is ``None``)."""
    body = env.base("text_completion")
    body["choices"] = [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]
    if usage is not None:
        body["usage"] = usage
    elif with_usage_field:
        body["usage"] = None
    return body


def model_entry(info: ModelInfo) -> dict[str, Any]:
    """One ``model`` object of ``GET /v1/models``."""
    entry: dict[str, Any] = dict(info.extra)
    entry.update({"id": info.id, "object": "model", "created": info.created, "owned_by": info.owned_by})
    if not info.ready:
        entry["needs_download"] = True
    return entry
