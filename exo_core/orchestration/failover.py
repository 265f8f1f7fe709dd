"""Failover: moving a request to a new plan when a node of its plan is lost.

A node of the plan is lost when its connections are gone, it froze past the keepalive timeout, or it
reported an ERROR for the request. The request then moves to a new plan over the nodes that remain, at most
``retries`` times: the prompt of the replay is the prompt plus every token the client already got, and the
wire's ``resumed`` field lets the last stage continue the penalties and the seeded random sequence, so the
client sees one stream with no token lost or repeated. Only when no plan fits, or the retries are used up,
does the request fail, with 503 ``node_lost`` naming the lost nodes.

- :class:`Resume`: one request's bookkeeping across its plans (wire id, tokens emitted, nodes left out);
  the backend sends ``max_tokens`` minus the tokens emitted, and these as ``resumed``;
- :class:`Failover`: the node's policy (which nodes are lost, whether and where a request moves) and its
  record of failovers for ``/metrics`` and ``/v1/topology``.

The loop that sends a plan its prompt and collects the tokens is :class:`~.backend.NodeBackend`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Set
from typing import Any

import anyio

from exo_core.api.backend import BackendError
from exo_core.orchestration.requests import RequestFailed
from exo_core.topology.cluster import ClusterView
from exo_core.topology.partition import Plan

log = logging.getLogger(__name__)

#: seconds a failover waits for the cluster view to tell which node of the failed plan is gone
LOSS_GRACE = 1.0
#: failovers remembered for ``/v1/topology``
RECENT_EVENTS = 32


@dataclasses.dataclass
class Resume:
    """Where a request stands across its plans: what the replay on the next plan starts from."""

    request_id: str
    #: plans of the request that ended so far (0 while the first one runs)
    attempt: int = 0
    #: every token the client got, in order: a replay resumes after them
    emitted: list[int] = dataclasses.field(default_factory=list)
    #: nodes the request no longer uses
    excluded: set[str] = dataclasses.field(default_factory=set)

    @property
    def wire_id(self) -> str:
        # each plan of the request runs under its own wire id, so steps of a lost plan still in
        # flight can never be taken for steps of the new one
        return self.request_id if self.attempt == 0 else f"{self.request_id}.{self.attempt}"

    def prompt(self, ids: list[int]) -> tuple[int, ...]:
        """The prompt the current plan gets: the request's prompt, then the tokens already emitted."""
        return (*ids, *self.emitted)


class Failover:
    """A node's failover policy and record (see module docstring)."""

    def __init__(self, cluster: ClusterView, retries: int) -> None:
        self.cluster = cluster
        #: times a request may move to a new plan (``--failover-retries``)
        self.retries = retries
        #: requests moved to a new plan so far (``GET /metrics``: ``exo_failovers_total``)
        self.count = 0
        #: the latest failovers, shown by ``/v1/topology`` as ``recent_events``
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)

    async def next_plan(
        self, resume: Resume, plan: Plan, failure: RequestFailed, replan: Callable[[Set[str]], Plan]
    ) -> Plan:
        """The plan a request moves to after ``failure`` ended ``plan``: ``replan`` over the reachable nodes
        but ``resume.excluded``, which the lost nodes join; ``resume.attempt`` counts the plan that ended.

        Raises:
            BackendError: 503 ``node_lost`` when the retries are used up or no plan fits without the lost
                nodes (the message names them and says the request can be retried).
        """
        resume.attempt += 1
        attempt, request_id = resume.attempt, resume.request_id
        lost = await self.lost_nodes([e.node_id for e in plan], failure)
        if attempt > self.retries:
            self._note(request_id, "failover_gave_up", lost, failure.message)
            raise BackendError(
                503,
                "node_lost",
                f"{failure.message}; the request already moved to a new plan {attempt - 1} time(s) "
                f"(--failover-retries {self.retries}); retry it",
            )
        resume.excluded.update(lost)
        try:
            new = replan(resume.excluded)
        except BackendError as exc:
            self._note(request_id, "failover_no_plan", lost, failure.message)
            raise BackendError(
                503,
                "node_lost",
                f"{failure.message}; no plan fits without node(s) {', '.join(sorted(resume.excluded))} "
                f"({exc.message}); retry the request when they are back",
            ) from None
        self._note(request_id, "failover", lost, failure.message)
        self.count += 1
        log.warning(
            "request %s: %s; lost node(s) %s; moving it to plan %s (retry %d of %d)",
            request_id,
            failure.message,
            ", ".join(sorted(lost)) or "none",
            " -> ".join(f"{e.node_id}[{e.first_layer}..{e.last_layer}]" for e in new),
            attempt,
            self.retries,
        )
        return new

    async def lost_nodes(self, old: list[str], failure: RequestFailed) -> set[str]:
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

    def _note(self, request_id: str, kind: str, lost: set[str], reason: str) -> None:
        self.recent_events.append(
            {
                "time": round(time.time(), 3),
                "event": kind,
                "request_id": request_id,
                "lost_nodes": sorted(lost),
                "reason": reason,
            }
        )
