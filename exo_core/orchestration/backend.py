"""The API node's side of a request: the :class:`~exo_core.api.backend.ChatBackend` of a node.

``generate`` renders the chat template, tokenizes, asks the partitioner for a plan over the reachable
nodes, sends ``PROMPT`` to the first stage and turns the ``TOKEN`` s that come back into text. It ends the
request with ``FINISH`` to every node of the plan, whether it finished, failed, timed out or was closed
early by the API (stop string, client gone).

**Failover**: when a node of the plan is lost (its connections are gone, it froze past the keepalive
timeout, or it reported an ERROR for the request), the request moves to a new plan over the nodes that
remain, at most ``failover_retries`` times: the prompt of the replay is the prompt plus every token the
client already got, and the wire's ``resumed`` field lets the last stage continue the penalties and the
seeded random sequence, so the client sees one stream with no token lost or repeated. Only when no plan
fits, or the retries are used up, does the request fail, with 503 ``node_lost`` naming the lost nodes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Set
from typing import Any

import anyio

from exo_core.api.backend import (
    BackendError,
    BackendEvent,
    Finished,
    ModelInfo,
    Progress,
    SamplingParams,
    Started,
    TokenEvent,
)
from exo_core.errors import ExoError
from exo_core.models.chat import render_chat
from exo_core.models.errors import ModelError, ModelNotFoundError
from exo_core.orchestration.catalog import Catalog, LoadedModel
from exo_core.orchestration.checks import check_length, check_memory, checked_logit_bias
from exo_core.orchestration.requests import RequestFailed, RequestTracker
from exo_core.protocol import inference as wire
from exo_core.protocol.codec import RoutedMessage
from exo_core.topology.cluster import ClusterView
from exo_core.topology.partition import NoCapacityError, Partitioner, Plan, fold_head

log = logging.getLogger(__name__)

Send = Callable[[str, RoutedMessage], Awaitable[None]]
MAX_WIRE_TOKENS = 2**32 - 1
#: seconds a failover waits for the cluster view to tell which node of the failed plan is gone
LOSS_GRACE = 1.0
#: failovers remembered for ``/v1/topology``
RECENT_EVENTS = 32


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
        self.failover_retries = failover_retries
        #: set when the node is shutting down: new requests get 503 (see :meth:`Node.drain`)
        self.draining = False
        #: requests moved to a new plan so far (``GET /metrics``: ``exo_failovers_total``)
        self.failovers = 0
        #: the latest failovers, shown by ``/v1/topology`` as ``recent_events``
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._last_plan: tuple[str, int, Plan] | None = None

    # ---- cheap reads -----------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m) for m in self.catalog.model_ids()]

    def default_model(self) -> str:
        return self.catalog.default_model

    def health(self) -> dict[str, Any]:
        return {
            "status": "draining" if self.draining else "ok",
            "node_id": self.cluster.self_id,
            "peers": len(self.cluster.own.neighbors),
            "nodes": len(self.cluster.reachable()),
            "requests_in_flight": len(self.tracker),
            "failovers": self.failovers,
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
        out["recent_events"] = list(self.recent_events)
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

        With ``model_bytes`` (the weights as stored), a plan that gives a node more of them than the memory
        it reports is refused: 503 ``no_capacity`` naming the node (the engine holds at least that much).
        """
        try:
            nodes = [n for n in self.cluster.resources() if n.node_id not in exclude]
            edges = frozenset(e for e in self.cluster.edges() if not e & exclude)
            units = self.partitioner.plan(nodes, edges, n_layers + head_layers)
            plan = fold_head(units, n_layers)
            if model_bytes:
                check_memory(plan, nodes, model_bytes / (n_layers + head_layers), head_layers, model)
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
        sampling = wire.SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or 0,
            seed=params.seed,
            max_tokens=max_tokens,
            top_logprobs=params.top_logprobs,
            stop_token_ids=loaded.tokenizer.eos_token_ids,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            logit_bias=checked_logit_bias(params.logit_bias, loaded.config.vocab_size),
        )
        tokenizer = loaded.tokenizer
        detok = tokenizer.detokenizer()
        emitted: list[int] = []  # every token the client got, in order: a replay resumes after them
        excluded: set[str] = set()
        attempt = 0
        yield Started(prompt_tokens=len(ids))
        while True:
            # each plan of the request runs under its own wire id, so steps of a lost plan still in
            # flight can never be taken for steps of the new one
            wire_id = request_id if attempt == 0 else f"{request_id}.{attempt}"
            ctx = wire.RequestContext(
                request_id=wire_id,
                origin=self.cluster.self_id,
                model_id=model,
                plan=tuple(wire.Stage(e.node_id, e.first_layer, e.last_layer) for e in plan),
                sampling=dataclasses.replace(
                    sampling, max_tokens=max_tokens - len(emitted), resumed=tuple(emitted)
                ),
            )
            nodes = frozenset(e.node_id for e in plan)
            events = self.tracker.open(wire_id, nodes)
            log.info(
                "request %s: %d prompt tokens%s, plan %s",
                wire_id,
                len(ids),
                f" + {len(emitted)} generated (resumed)" if emitted else "",
                " -> ".join(f"{e.node_id}[{e.first_layer}..{e.last_layer}]" for e in plan),
            )
            reason = "cancelled"
            failure: RequestFailed | None = None
            try:
                try:
                    await self._send(plan[0].node_id, wire.Prompt(ctx, (*ids, *emitted)))
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
                    emitted.append(event.token_id)
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
            attempt += 1
            plan = await self._failover(
                request_id,
                model,
                (n_layers, head_layers, loaded.model_bytes),
                plan,
                failure,
                attempt,
                excluded,
            )

    async def _failover(
        self,
        request_id: str,
        model: str,
        layers: tuple[int, int, int],
        plan: Plan,
        failure: RequestFailed,
        attempt: int,
        excluded: set[str],
    ) -> Plan:
        """The plan a request moves to after ``failure`` ended its ``attempt``-th plan; the lost nodes join
        ``excluded`` (the nodes this request no longer uses).

        Raises:
            BackendError: 503 ``node_lost`` when the retries are used up or no plan fits without the lost
                nodes (the message names them and says the request can be retried).
        """
        old = [e.node_id for e in plan]
        lost = await self._lost_nodes(old, failure)
        named = ", ".join(sorted(lost)) or "none"
        if attempt > self.failover_retries:
            self._note_event(request_id, "failover_gave_up", lost, failure.message)
            raise BackendError(
                503,
                "node_lost",
                f"{failure.message}; the request already moved to a new plan {attempt - 1} time(s) "
                f"(--failover-retries {self.failover_retries}); retry it",
            )
        excluded.update(lost)
        try:
            n_layers, head_layers, model_bytes = layers
            new = self.plan(model, n_layers, head_layers, exclude=excluded, model_bytes=model_bytes)
        except BackendError as exc:
            self._note_event(request_id, "failover_no_plan", lost, failure.message)
            raise BackendError(
                503,
                "node_lost",
                f"{failure.message}; no plan fits without node(s) {', '.join(sorted(excluded))} "
                f"({exc.message}); retry the request when they are back",
            ) from None
        self._note_event(request_id, "failover", lost, failure.message)
        self.failovers += 1
        log.warning(
            "request %s: %s; lost node(s) %s; moving it to plan %s (retry %d of %d)",
            request_id,
            failure.message,
            named,
            " -> ".join(f"{e.node_id}[{e.first_layer}..{e.last_layer}]" for e in new),
            attempt,
            self.failover_retries,
        )
        return new

    async def _lost_nodes(self, old: list[str], failure: RequestFailed) -> set[str]:
        """The nodes of a failed plan to leave out of the next one: those no longer reachable or leaving
        (waiting up to :data:`LOSS_GRACE` s for the cluster view to notice), else the node that reported
        the failure."""
        deadline = time.monotonic() + LOSS_GRACE
        while True:
            usable = self.cluster.reachable() - (self.cluster.leaving() - {self.cluster.self_id})
            lost = {n for n in old if n not in usable}
            if lost or time.monotonic() >= deadline:
                break
            await anyio.sleep(0.05)
        if not lost and failure.node_id in old and failure.node_id != self.cluster.self_id:
            lost = {failure.node_id}
        return lost

    def _note_event(self, request_id: str, kind: str, lost: set[str], reason: str) -> None:
        self.recent_events.append(
            {
                "time": round(time.time(), 3),
                "event": kind,
                "request_id": request_id,
                "lost_nodes": sorted(lost),
                "reason": reason,
            }
        )
