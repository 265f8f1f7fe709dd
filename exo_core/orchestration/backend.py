"""The API node's side of a request: the :class:`~exo_core.api.backend.ChatBackend` of a node.

``generate`` renders the chat template, tokenizes, asks the partitioner for a plan over the reachable
nodes, sends ``PROMPT`` to the first stage and turns the ``TOKEN`` s that come back into text. It ends the
request with ``FINISH`` to every node of the plan, whether it finished, failed, timed out or was closed
early by the API (stop string, client gone).

When a node of the plan is lost, the request moves to a new plan over the nodes that remain, at most
``failover_retries`` times, and the client sees one stream (:mod:`~exo_core.orchestration.failover`).
``/v1/topology`` is described by :mod:`~exo_core.orchestration.topology_view`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Set
from typing import Any

import anyio

from exo_core.api.backend import (
    BackendError,
    BackendEvent,
    Finished,
    ModelInfo,
    Progress,
    Started,
    TokenEvent,
)
from exo_core.errors import ExoError
from exo_core.models.chat import render_chat
from exo_core.models.errors import ModelError, ModelNotFoundError
from exo_core.orchestration.catalog import Catalog, LoadedModel
from exo_core.orchestration.checks import check_length, check_memory, checked_logit_bias
from exo_core.orchestration.failover import Failover, Resume
from exo_core.orchestration.requests import RequestFailed, RequestTracker
from exo_core.orchestration.router import Send
from exo_core.orchestration.topology_view import LastPlan, describe_topology
from exo_core.params import SamplingParams
from exo_core.protocol import inference as wire
from exo_core.protocol.sampling import Sampling
from exo_core.topology.cluster import ClusterView
from exo_core.topology.partition import NoCapacityError, Partitioner, Plan, fold_head

log = logging.getLogger(__name__)

MAX_WIRE_TOKENS = 2**32 - 1


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
        failover_retries: int = 2,
        peer_rtt: Callable[[], dict[str, float]] | None = None,
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
        self._peer_rtt = peer_rtt
        self.failover = Failover(cluster, failover_retries)
        #: set when the node is shutting down: new requests get 503 (see :meth:`Node.drain`)
        self.draining = False
        self._last_plan: LastPlan | None = None

    @property
    def failover_retries(self) -> int:
        """Times a request may move to a new plan when a node of its plan is lost."""
        return self.failover.retries

    @failover_retries.setter
    def failover_retries(self, value: int) -> None:
        self.failover.retries = value

    @property
    def recent_events(self) -> deque[dict[str, Any]]:
        """The latest failovers, shown by ``/v1/topology`` as ``recent_events``."""
        return self.failover.recent_events

    # ---- cheap reads -----------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, ready=self.catalog.ready(m)) for m in self.catalog.model_ids()]

    def default_model(self) -> str:
        return self.catalog.default_model

    def health(self) -> dict[str, Any]:
        shards = self._shards() if self._shards is not None else []
        return {
            "status": "draining" if self.draining else "ok",
            "node_id": self.cluster.self_id,
            "peers": len(self.cluster.own.neighbors),
            "nodes": len(self.cluster.reachable()),
            "requests_in_flight": len(self.tracker),
            "failovers": self.failover.count,
            "weights_bytes": sum(_int(s.get("weights_bytes")) for s in shards),
            "kv_cache_bytes": sum(_int(s.get("kv_cache_bytes")) for s in shards),
            "peer_ids": sorted(self.cluster.own.neighbors),
            "peer_rtt_seconds": self._peer_rtt() if self._peer_rtt is not None else {},
        }

    def topology(self) -> dict[str, Any]:
        shards = self._shards() if self._shards is not None else None
        return describe_topology(self.cluster, self._last_plan, shards, self.recent_events)

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
                check_length(loaded, sum(len(str(m.get("content") or "")) for m in messages), param)
                text = await anyio.to_thread.run_sync(lambda: render_chat(loaded.source, messages))
            else:
                text = prompt or ""
            check_length(loaded, len(text), param)
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

    def plan(
        self,
        model: str,
        n_layers: int,
        head_layers: int = 0,
        exclude: Set[str] = frozenset(),
        model_bytes: int = 0,
    ) -> Plan:
        """The partitioner's plan for ``n_layers`` layers and an output head worth ``head_layers`` layers,
        the head folded onto the last node (:func:`~exo_core.topology.partition.fold_head`), over the
        reachable nodes but those in ``exclude``.

        With ``model_bytes`` (the weights as stored), a plan that gives a node more weights than the memory it
        reports is refused: 503 ``no_capacity`` naming the node. A node's weights are its share of the stored
        bytes times what its engine holds per stored byte, as the node measured on its last load of the
        model and gossiped (``held_ratio``; 1 until then).
        """
        try:
            nodes = [n for n in self.cluster.resources() if n.node_id not in exclude]
            edges = frozenset(e for e in self.cluster.edges() if not e & exclude)
            units = self.partitioner.plan(nodes, edges, n_layers + head_layers)
            plan = fold_head(units, n_layers)
            if model_bytes:
                unit = model_bytes / (n_layers + head_layers)
                check_memory(plan, nodes, unit, head_layers, model, self.cluster.held_ratios(model))
        except NoCapacityError as exc:
            raise BackendError(503, "no_capacity", str(exc)) from exc
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
        if self.draining:
            raise BackendError(
                503,
                "draining",
                f"node {self.cluster.self_id} is shutting down: send the request to another node, or retry",
            )
        loaded, ids = await self._prepare(model, messages, prompt)
        n_layers, head_layers = loaded.config.n_layers, loaded.head_layers
        plan = self.plan(model, n_layers, head_layers, model_bytes=loaded.model_bytes)
        room = loaded.config.context_length - len(ids)
        if params.max_tokens is not None and params.max_tokens > room:
            raise BackendError(
                400,
                "context_length_exceeded",
                f"the model's context is {loaded.config.context_length} tokens and the prompt has "
                f"{len(ids)}: max_tokens may be at most {room} (got {params.max_tokens})",
                param="max_tokens",
            )
        max_tokens = min(params.max_tokens if params.max_tokens is not None else room, room, MAX_WIRE_TOKENS)
        max_tokens = max(1, max_tokens)
        checked_logit_bias(params.logit_bias, loaded.config.vocab_size)
        sampling = Sampling(params, max_tokens, loaded.tokenizer.eos_token_ids)
        tokenizer = loaded.tokenizer
        detok = tokenizer.detokenizer()
        resume = Resume(request_id)
        yield Started(prompt_tokens=len(ids))
        while True:
            wire_id = resume.wire_id
            ctx = wire.RequestContext(
                request_id=wire_id,
                origin=self.cluster.self_id,
                model_id=model,
                plan=tuple(wire.Stage(e.node_id, e.first_layer, e.last_layer) for e in plan),
                sampling=dataclasses.replace(
                    sampling, max_tokens=max_tokens - len(resume.emitted), resumed=tuple(resume.emitted)
                ),
            )
            nodes = frozenset(e.node_id for e in plan)
            events = self.tracker.open(wire_id, nodes)
            log.info(
                "request %s: %d prompt tokens%s, plan %s",
                wire_id,
                len(ids),
                f" + {len(resume.emitted)} generated (resumed)" if resume.emitted else "",
                " -> ".join(f"{e.node_id}[{e.first_layer}..{e.last_layer}]" for e in plan),
            )
            reason = "cancelled"
            failure: RequestFailed | None = None
            try:
                try:
                    await self._send(plan[0].node_id, wire.Prompt(ctx, resume.prompt(ids)))
                except (ExoError, OSError) as exc:
                    failure = RequestFailed(f"cannot reach node {plan[0].node_id}: {exc}", plan[0].node_id)
                timeout, waiting_first = self.request_timeout, True
                while failure is None:
                    event = None
                    with anyio.move_on_after(timeout):
                        event = await events.receive()
                    if event is None:
                        reason = "error"
                        what = "progress on the prompt" if waiting_first else "token"
                        raise BackendError(
                            504,
                            "timeout",
                            f"no {what} within {timeout:.0f} s (plan: {', '.join(sorted(nodes))})",
                        )
                    if isinstance(event, wire.Progress):  # the prefill advances: a new wait begins
                        yield Progress(event.done, event.total)
                        continue
                    timeout, waiting_first = self.token_timeout, False
                    if isinstance(event, RequestFailed):
                        reason = "error"
                        failure = event
                        break
                    if event.finished and event.finish_reason == "stop":
                        reason = "stop"
                        yield Finished("stop")
                        return
                    resume.emitted.append(event.token_id)
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
                self.tracker.close(wire_id)
                events.close()
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    for node in sorted(nodes):
                        try:
                            await self._send(node, wire.Finish(wire_id, reason))
                        except Exception as exc:
                            log.debug("FINISH for %s to %s not delivered: %s", wire_id, node, exc)
            plan = await self.failover.next_plan(
                resume,
                plan,
                failure,
                lambda exclude: self.plan(
                    model, n_layers, head_layers, exclude=exclude, model_bytes=loaded.model_bytes
                ),
            )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
