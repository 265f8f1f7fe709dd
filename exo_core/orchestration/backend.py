"""The API node's side of a request: the :class:`~exo_core.api.backend.ChatBackend` of a node.

``generate`` renders the chat template, tokenizes, asks the partitioner for a plan over the reachable
nodes, sends ``PROMPT`` to the first stage and turns the ``TOKEN`` s that come back into text. It ends the
request with ``FINISH`` to every node of the plan, whether it finished, failed, timed out or was closed
early by the API (stop string, client gone).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from exo_core.api.backend import (
    BackendError,
    BackendEvent,
    Finished,
    ModelInfo,
    SamplingParams,
    Started,
    TokenEvent,
)
from exo_core.errors import ExoError
from exo_core.models.chat import render_chat
from exo_core.models.errors import ModelError, ModelNotFoundError
from exo_core.orchestration.catalog import Catalog, LoadedModel
from exo_core.orchestration.requests import RequestFailed, RequestTracker
from exo_core.protocol import inference as wire
from exo_core.protocol.codec import RoutedMessage
from exo_core.topology.cluster import ClusterView
from exo_core.topology.partition import NoCapacityError, Partitioner, Plan, fold_head

log = logging.getLogger(__name__)

Send = Callable[[str, RoutedMessage], Awaitable[None]]
MAX_WIRE_TOKENS = 2**32 - 1


def checked_logit_bias(bias: tuple[tuple[int, float], ...], vocab_size: int) -> tuple[tuple[int, float], ...]:
    """``bias`` if every token id is in the model's vocabulary, else a 400 naming ``logit_bias``.

    The API checks everything else; only here is the model (and so its vocabulary size) known.
    """
    for token, _ in bias:
        if not 0 <= token < vocab_size:
            raise BackendError(
                400,
                "invalid_request",
                f"logit_bias: token id {token} is out of range (the model has {vocab_size} tokens)",
                param="logit_bias",
            )
    return bias


def _check_length(loaded: LoadedModel, chars: int, param: str) -> None:
    """Refuse, before tokenizing it, a text too long to fit the context whatever its tokens.

    A text of ``chars`` characters has at least ``chars / max_token_chars`` tokens; the bound is halved
    again for normalizers that fold several characters into one. Tokenizing megabytes takes seconds of CPU
    and a gigabyte of memory, all for a 400 at the end.
    """
    limit = loaded.config.context_length * loaded.tokenizer.max_token_chars * 2
    if chars > limit:
        raise BackendError(
            400,
            "context_length_exceeded",
            f"the prompt has {chars} characters, more than any {loaded.config.context_length}-token context "
            f"can hold ({limit} at most for this model's tokenizer)",
            param=param,
        )


class NodeBackend:
    """Serves API requests with the whole cluster (see module docstring)."""

    def __init__(
        self,
        cluster: ClusterView,
        catalog: Catalog,
        partitioner: Partitioner,
        tracker: RequestTracker,
        send: Send,
        *,
        request_timeout: float = 120.0,
        token_timeout: float = 30.0,
        engine_name: str = "",
        shards: Callable[[], list[dict[str, object]]] | None = None,
    ) -> None:
        self.cluster = cluster
        self.catalog = catalog
        self.partitioner = partitioner
        self.tracker = tracker
        self._send = send
        self.request_timeout = request_timeout
        self.token_timeout = token_timeout
        self.engine_name = engine_name
        self._shards = shards
        self._last_plan: tuple[str, int, Plan] | None = None

    # ---- cheap reads -----------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m) for m in self.catalog.model_ids()]

    def default_model(self) -> str:
        return self.catalog.default_model

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "node_id": self.cluster.self_id,
            "peers": len(self.cluster.own.neighbors),
            "nodes": len(self.cluster.reachable()),
            "requests_in_flight": len(self.tracker),
        }

    def topology(self) -> dict[str, Any]:
        reachable = self.cluster.reachable()
        nodes = []
        for rec in sorted(self.cluster.records.values(), key=lambda r: r.node_id):
            if rec.node_id not in reachable:
                continue
            caps = rec.capabilities
            node: dict[str, Any] = {
                "id": rec.node_id,
                "address": rec.address,
                "is_self": rec.node_id == self.cluster.self_id,
            }
            for key in ("model", "chip", "engine"):
                if isinstance(caps.get(key), str):
                    node[key] = caps[key]
            node["memory_mb"] = rec.memory_mb
            if isinstance(caps.get("flops"), dict):
                node["flops"] = caps["flops"]
            nodes.append(node)
        connections = [
            {"a": a, "b": b}
            for a, b in sorted(sorted(e) for e in self.cluster.edges())
            if a in reachable and b in reachable
        ]
        plan = None
        if self._last_plan is not None:
            model, n_layers, entries = self._last_plan
            plan = {
                "model": model,
                "n_layers": n_layers,
                "shards": [
                    {"node_id": e.node_id, "first_layer": e.first_layer, "last_layer": e.last_layer}
                    for e in entries
                ],
            }
        out: dict[str, Any] = {
            "node_id": self.cluster.self_id,
            "nodes": nodes,
            "connections": connections,
            "plan": plan,
        }
        if self._shards is not None:
            out["loaded_shards"] = self._shards()
        return out

    # ---- generation ------------------------------------------------------------------------------------

    async def _prepare(
        self, model: str, messages: list[dict[str, Any]] | None, prompt: str | None
    ) -> tuple[LoadedModel, list[int]]:
        if not self.catalog.knows(model):
            known = ", ".join(self.catalog.model_ids())
            raise BackendError(
                404, "model_not_found", f"model {model!r} is not known here; known: {known}", param="model"
            )
        param = "messages" if messages is not None else "prompt"
        try:
            loaded = await self.catalog.load(model)
            if messages is not None:
                _check_length(loaded, sum(len(str(m.get("content") or "")) for m in messages), param)
                text = await anyio.to_thread.run_sync(lambda: render_chat(loaded.source, messages))
            else:
                text = prompt or ""
            _check_length(loaded, len(text), param)
            # off the event loop: a long prompt takes seconds to tokenize (the tokenizer lets go of the GIL)
            ids = await anyio.to_thread.run_sync(loaded.tokenizer.encode, text)
        except ModelNotFoundError as exc:
            raise BackendError(404, "model_not_found", str(exc), param="model") from exc
        except ModelError as exc:
            raise BackendError(500, "model_error", str(exc)) from exc
        except ValueError as exc:
            raise BackendError(400, "invalid_request", str(exc), param="messages") from exc
        if not ids:
            raise BackendError(
                400, "invalid_request", "the prompt is empty after tokenization", param="prompt"
            )
        if len(ids) >= loaded.config.context_length:
            raise BackendError(
                400,
                "context_length_exceeded",
                f"the prompt has {len(ids)} tokens; the model's context is {loaded.config.context_length}",
                param=param,
            )
        return loaded, ids

    def plan(self, model: str, n_layers: int, head_layers: int = 0) -> Plan:
        """The partitioner's plan for ``n_layers`` layers and an output head worth ``head_layers`` layers,
        the head folded onto the last node (:func:`~exo_core.topology.partition.fold_head`)."""
        try:
            nodes, edges = self.cluster.resources(), self.cluster.edges()
            units = self.partitioner.plan(nodes, edges, n_layers + head_layers)
        except NoCapacityError as exc:
            raise BackendError(503, "no_capacity", str(exc)) from exc
        plan = fold_head(units, n_layers)
        self._last_plan = (model, n_layers, plan)
        return plan

    async def generate(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]] | None,
        prompt: str | None,
        params: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[BackendEvent]:
        loaded, ids = await self._prepare(model, messages, prompt)
        plan = self.plan(model, loaded.config.n_layers, loaded.head_layers)
        room = loaded.config.context_length - len(ids)
        max_tokens = min(params.max_tokens if params.max_tokens is not None else room, room, MAX_WIRE_TOKENS)
        ctx = wire.RequestContext(
            request_id=request_id,
            origin=self.cluster.self_id,
            model_id=model,
            plan=tuple(wire.Stage(e.node_id, e.first_layer, e.last_layer) for e in plan),
            sampling=wire.SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or 0,
                seed=params.seed,
                max_tokens=max(1, max_tokens),
                top_logprobs=params.top_logprobs,
                stop_token_ids=loaded.tokenizer.eos_token_ids,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                logit_bias=checked_logit_bias(params.logit_bias, loaded.config.vocab_size),
            ),
        )
        nodes = frozenset(e.node_id for e in plan)
        events = self.tracker.open(request_id, nodes)
        log.info(
            "request %s: %d prompt tokens, plan %s",
            request_id,
            len(ids),
            " -> ".join(f"{e.node_id}[{e.first_layer}..{e.last_layer}]" for e in plan),
        )
        reason = "cancelled"
        try:
            yield Started(prompt_tokens=len(ids))
            try:
                await self._send(plan[0].node_id, wire.Prompt(ctx, tuple(ids)))
            except (ExoError, OSError) as exc:
                raise BackendError(
                    502, "peer_unreachable", f"cannot reach node {plan[0].node_id}: {exc}"
                ) from exc
            detok = loaded.tokenizer.detokenizer()
            tokenizer = loaded.tokenizer
            timeout = self.request_timeout
            while True:
                event = None
                with anyio.move_on_after(timeout):
                    event = await events.receive()
                if event is None:
                    reason = "error"
                    raise BackendError(
                        504, "timeout", f"no token within {timeout:.0f} s (plan: {', '.join(sorted(nodes))})"
                    )
                timeout = self.token_timeout
                if isinstance(event, RequestFailed):
                    reason = "error"
                    raise BackendError(502, "node_failed", event.message)
                if event.finished and event.finish_reason == "stop":
                    reason = "stop"
                    yield Finished("stop")
                    return
                top = None
                if params.top_logprobs:
                    top = [(tokenizer.decode([t]), lp) for t, lp in event.top_logprobs]
                yield TokenEvent(
                    token_id=event.token_id,
                    text=detok.add(event.token_id),
                    logprob=event.logprob if params.logprobs else None,
                    top_logprobs=top,
                )
                if event.finished:
                    reason = "length"
                    yield Finished("length")
                    return
        finally:
            self.tracker.close(request_id)
            events.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for node in sorted(nodes):
                    try:
                        await self._send(node, wire.Finish(request_id, reason))
                    except Exception as exc:
                        log.debug("FINISH for %s to %s not delivered: %s", request_id, node, exc)
