"""The protocol between the HTTP API and whatever generates tokens (the node's orchestration).

The API layer (:func:`exo_core.api.create_app`) validates requests, formats OpenAI responses, applies stop
strings and streams server-sent events; everything about models, plans and peers sits behind
:class:`ChatBackend`. One ``generate`` call is one request: it yields exactly one :class:`Started`, then
:class:`TokenEvent` s, then exactly one :class:`Finished`::

    async for event in backend.generate(model=..., messages=[...], prompt=None, params=..., request_id=...):
        ...  # Started(prompt_tokens=12), TokenEvent(...), ..., Finished(reason="stop")

Errors are :class:`BackendError` raised from ``generate`` (before the first event or during the stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict

from exo_core.params import SamplingParams

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Started:
    """First event of every request, yielded as soon as the request is accepted (prompt tokenized, plan
    built), before the prompt is processed. An error before it becomes an HTTP error status; an error after
    it becomes a final error event of the stream.

    Attributes:
        prompt_tokens: number of prompt tokens (after the chat template), reported in ``usage``.
    """

    prompt_tokens: int


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. The end-of-sequence token is never yielded (``Finished("stop")`` is).

    Attributes:
        token_id: the token's id in the model's vocabulary.
        text: the text this token adds, already incrementally detokenized (may be ``""`` when the token
            completes no character yet, e.g. the first bytes of a multi-byte character).
        logprob: log-probability of the token under the sampling distribution's logits (set when
            ``params.logprobs``).
        top_logprobs: the ``params.top_logprobs`` most likely tokens as ``(token text, logprob)``,
            most likely first.
    """

    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[str, float]] | None = None


@dataclass(frozen=True)
class Finished:
    """Last event of every request.

    Attributes:
        reason: ``"stop"`` when the model produced its end-of-sequence token, ``"length"`` when
            ``max_tokens`` or the end of the model's context was reached.
    """

    reason: FinishReason


@dataclass(frozen=True)
class Progress:
    """Optional, between :class:`Started` and the first token: the prompt is being processed (``done`` of
    ``total`` positions). The API does not show it; it only proves the request is alive, so a long prompt
    is not cut by the idle timeout while it advances.
    """

    done: int
    total: int


BackendEvent = Started | Progress | TokenEvent | Finished


class BackendError(Exception):
    """A request cannot be served; becomes an OpenAI error JSON with ``status``.

    Typical values: ``BackendError(404, "model_not_found", "model 'x' is not known; known: a, b")``,
    ``BackendError(503, "no_capacity", "...")``, ``BackendError(502, "peer_lost", "node n2 went away ...")``,
    ``BackendError(500, "internal_error", "...")``.

    Attributes:
        status: the HTTP status (4xx: the client's fault, 5xx: the cluster's).
        code: short machine-readable code, the ``error.code`` of the JSON.
        message: what went wrong and, when possible, what to do; the ``error.message`` of the JSON.
        param: the request field at fault, if any (``error.param``).
    """

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"BackendError({self.status}, {self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class ModelInfo:
    """A model the cluster can serve, listed by ``GET /v1/models``.

    Attributes:
        id: the name requests use (``"smollm2-135m"``).
        owned_by: shown as ``owned_by``.
        created: Unix time shown as ``created`` (0 when unknown).
        extra: more JSON-able fields added to the model's entry (e.g. ``{"context_length": 8192}``).
        ready: the cluster can serve it now; ``False`` when it needs a download first (``GET /v1/models``
            lists it only with ``?all=true``, marked ``"needs_download": true``).
    """

    id: str
    owned_by: str = "exo"
    created: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    ready: bool = True


class TopologyNode(TypedDict, total=False):
    """One node in :meth:`ChatBackend.topology` (the web page shows every field it finds)."""

    id: str  # node id (required)
    address: str  # "host:port" of its transport, if known
    model: str  # device model, e.g. "MacBook Pro"
    chip: str  # e.g. "Apple M2", "AMD EPYC 7B13"
    memory_mb: int
    flops: dict[str, float]  # TFLOPS by precision: {"fp32": ..., "fp16": ..., "int8": ...}
    engine: str  # inference engine name
    is_self: bool  # the node answering this request


class TopologyShard(TypedDict):
    """One entry of a layer plan: ``node_id`` runs layers ``first_layer..last_layer`` (inclusive)."""

    node_id: str
    first_layer: int
    last_layer: int


class TopologyPlan(TypedDict, total=False):
    """The layer plan new requests would use now."""

    model: str
    n_layers: int
    shards: list[TopologyShard]


class TopologyReport(TypedDict, total=False):
    """The JSON of ``GET /v1/topology`` (what :meth:`ChatBackend.topology` returns).

    ``connections`` lists each directly connected node pair once, as ``{"a": id1, "b": id2}``.
    """

    node_id: str
    nodes: list[TopologyNode]
    connections: list[dict[str, str]]
    plan: TopologyPlan | None


class ChatBackend(Protocol):
    """What the API needs from a node. Implemented by the orchestration layer; tests use a fake.

    ``models``, ``default_model``, ``topology`` and ``health`` are called on the event loop: they must be
    cheap reads of in-memory state (no I/O, no blocking).
    """

    def models(self) -> list[ModelInfo]:
        """The models requests may name."""
        ...

    def default_model(self) -> str:
        """The model used when a request names none (listed first by ``GET /v1/models``)."""
        ...

    def generate(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]] | None,
        prompt: str | None,
        params: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[BackendEvent]:
        """Start one request; exactly one of ``messages`` and ``prompt`` is given.

        Args:
            model: a model id from :meth:`models` (the API checked it).
            messages: chat messages ``{"role": "system"|"user"|"assistant", "content": str}`` (plus
                ``"name"`` when the client gave one): apply the model's chat template with the generation
                prompt added.
            prompt: a raw completion prompt: tokenize as is, no chat template.
            params: sampling parameters.
            request_id: unique id of this request (also in the HTTP response's id), for logs and plans.

        Returns:
            An async iterator (typically an async generator) of one :class:`Started`, the
            :class:`TokenEvent` s, and one :class:`Finished`. Raise :class:`BackendError` before or during
            the stream. The API may close it early with ``aclose()`` (stop string, client disconnect,
            timeout), or cancel the task awaiting it: either must cancel the request on every node.
            Cleanup that awaits must therefore run shielded and time-bounded, and the generator must not
            ``yield`` inside a task group or cancel scope.
        """
        ...

    def topology(self) -> dict[str, Any]:
        """The cluster as this node sees it, JSON-able, in the shape of :class:`TopologyReport`."""
        ...

    def health(self) -> dict[str, Any]:
        """JSON-able health of this node for ``GET /healthcheck`` (e.g. ``{"status": "ok", "peers": 2}``).

        ``"status"`` other than ``"ok"`` makes the endpoint answer 503.
        """
        ...
