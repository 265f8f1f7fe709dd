"""Request bodies of the OpenAI routes, validated strictly (wrong types are errors, not coerced).

Unknown fields are ignored, as OpenAI-compatible servers do; known fields that would change the meaning of
a request but are not supported here (``n`` > 1, tools, ``echo``, ...) are rejected with a 400 saying so.
``null`` means "the default" for every optional field.

``logit_bias``, ``presence_penalty`` and ``frequency_penalty`` follow OpenAI's definitions (applied by
:func:`exo_core.models.sampling.adjust_logits` on the last stage of the plan); the logprobs a response
reports are those of the adjusted logits (at temperature 1, before top-k/top-p).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exo_core.params import SamplingParams

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
#: most ``logit_bias`` entries a request may carry (OpenAI's reference documents no bound; this one keeps a
#: request's sampling state small)
MAX_LOGIT_BIAS = 300
#: ``logit_bias`` values must lie in [-100, 100] (OpenAI's range; outside it is an error, never clamped)
LOGIT_BIAS_RANGE = 100.0
_DIGITS = re.compile(r"[0-9]+")


class FieldError(ValueError):
    """A check across fields that blames one of them: the 400 names ``param`` (a plain ``ValueError`` from a
    model validator would name none)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class TextPart(_Strict):
    """A text part of a message's content (``{"type": "text", "text": "..."}``)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One chat message. ``developer`` is OpenAI's newer name for ``system`` and is passed on as such."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def to_backend(self) -> dict[str, Any]:
        """The message as :meth:`ChatBackend.generate` receives it: ``role`` and plain-text ``content``."""
        if isinstance(self.content, str):
            text = self.content
        else:
            text = "\n".join(part.text for part in self.content)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.name:
            out["name"] = self.name
        return out


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` adds a final chunk with ``usage`` and empty ``choices``."""

    include_usage: bool | None = None


class _Common(_Strict):
    model: str | None = Field(None, description="model id; default: the node's default model")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="any signed 64-bit integer")
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Any] | None = Field(
        None, description="token id (as a string) -> bias in [-100, 100] added to its logit"
    )
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if not value:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries are allowed, got {len(value)}")
        seen: set[int] = set()
        for key, bias in value.items():
            if not _DIGITS.fullmatch(key):
                raise ValueError(f"keys must be token ids (non-negative integers), got {key[:32]!r}")
            if len(key) > 10 or int(key) >= 2**31:
                raise ValueError(f"token id {key[:32]} is out of range")
            token = int(key)
            if token in seen:
                raise ValueError(f"token id {token} appears twice")
            seen.add(token)
            if isinstance(bias, bool) or not isinstance(bias, int | float):
                raise ValueError(f"the bias of token {token} must be a number, got {type(bias).__name__}")
            if not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:  # false for NaN too
                raise ValueError(f"the bias of token {token} must be in [-100, 100], got {bias}")
        return value

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as ``(token id, bias)`` pairs (validated)."""
        return tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items())

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
        for stop in stops:
            if not stop:
                raise ValueError("stop strings must not be empty")
            if len(stop) > MAX_STOP_LENGTH:
                raise ValueError(f"stop strings must be at most {MAX_STOP_LENGTH} characters")
        return value

    @field_validator("n")
    @classmethod
    def _check_n(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported (one choice per request)")
        return value

    def stop_strings(self) -> list[str]:
        """``stop`` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def streaming(self) -> bool:
        """Whether to answer with server-sent events."""
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a ``usage`` chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_unsupported(self) -> ChatCompletionRequest:
        if self.tools:
            raise FieldError("tools", "tools are not supported by this server")
        if self.functions:
            raise FieldError("functions", "functions are not supported by this server")
        if self.tool_choice not in (None, "none"):
            raise FieldError("tool_choice", "tool_choice is only allowed when tools are given")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise FieldError("response_format", "only {'type': 'text'} is supported")
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs requires logprobs=true")
        _check_stream_options(self)
        return self

    def sampling(self) -> SamplingParams:
        """The backend's sampling parameters (``max_completion_tokens`` wins over ``max_tokens``)."""
        return SamplingParams(
            max_tokens=self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=self.seed,
            logprobs=bool(self.logprobs),
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else 0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=self.bias_pairs(),
        )


def _check_stream_options(req: _Common) -> None:
    if req.stream_options is not None and not req.stream:
        raise FieldError("stream_options", "stream_options is only allowed when stream is true")


#: OpenAI's default ``max_tokens`` for legacy completions.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class CompletionRequest(_Common):
    """Body of ``POST /v1/completions`` (raw prompt, no chat template)."""

    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _check_unsupported(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise FieldError("prompt", "give one string (batches of prompts are not supported)")
        if self.echo:
            raise FieldError("echo", "echo=true is not supported")
        if self.suffix:
            raise FieldError("suffix", "suffix is not supported")
        if self.best_of is not None and self.best_of != 1:
            raise FieldError("best_of", "only best_of=1 is supported")
        _check_stream_options(self)
        return self

    def prompt_text(self) -> str:
        """The prompt as one string."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def sampling(self) -> SamplingParams:
        """The backend's sampling parameters (``max_tokens`` defaults to 16, as OpenAI's)."""
        return SamplingParams(
            max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=self.seed,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=self.bias_pairs(),
        )
