"""Topology gossip: keep every node's :class:`ClusterView` in step.

Whenever this node's direct connections change, and every ``interval`` seconds anyway, it sends a
``TOPOLOGY`` message with every record it knows to each direct peer. Received records are merged (the
newest record of each node wins); news is passed on at the next round, so it crosses the cluster in
about one interval per hop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from exo_core.protocol.inference import NodeState, Topology
from exo_core.topology.cluster import ClusterView, NodeRecord
from exo_core.transport.contract import Transport
from exo_core.transport.errors import TransportError
from exo_core.transport.types import PeerEvent

log = logging.getLogger(__name__)


def to_state(record: NodeRecord) -> NodeState:
    return NodeState(
        record.node_id, record.seq, record.address, dict(record.capabilities), tuple(sorted(record.neighbors))
    )


def to_record(state: NodeState) -> NodeRecord:
    caps: dict[str, Any] = dict(state.capabilities)
    return NodeRecord(state.node_id, state.epoch, caps, frozenset(state.peers), state.address)


class Gossip:
    """Sends and merges ``TOPOLOGY`` messages (see module docstring)."""

    def __init__(
        self,
        cluster: ClusterView,
        transport: Transport,
        *,
        interval: float = 1.0,
        max_age: float = 30.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.transport = transport
        self.interval = interval
        self.max_age = max_age
        self._on_change = on_change
        self._wake = anyio.Event()

    def _changed(self) -> None:
        self._wake.set()
        if self._on_change is not None:
            self._on_change()

    def announce(self) -> None:
        """This node's own record changed (e.g. it is leaving): send it to every peer now."""
        self._changed()

    def on_peer_event(self, event: PeerEvent) -> None:
        """Transport peer listener: a direct connection came or went."""
        neighbors = [pid for pid, info in self.transport.peers.items() if not info.tool]
        if self.cluster.set_neighbors(neighbors):
            log.info(
                "peer %s %s; direct peers: %s",
                event.peer.node_id,
                event.kind,
                ", ".join(sorted(neighbors)) or "none",
            )
            self._changed()

    def on_topology(self, msg: Topology, sender: str) -> None:
        changed = False
        for state in msg.nodes:
            try:
                changed |= self.cluster.merge(to_record(state))
            except ValueError as exc:
                log.warning("ignoring a malformed topology record from %s: %s", sender, exc)
        if changed:
            self._changed()

    def message(self) -> Topology:
        return Topology(tuple(to_state(r) for r in self.cluster.records.values()))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with anyio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            gone = self.cluster.prune(self.max_age)
            if gone:
                log.info("forgot unreachable nodes: %s", ", ".join(gone))
            msg = self.message()
            for peer_id, info in list(self.transport.peers.items()):
                if info.tool:
                    continue
                try:
                    with anyio.fail_after(max(self.interval, 1.0) * 5):
                        await self.transport.send(peer_id, msg)
                except (TransportError, TimeoutError) as exc:
                    log.debug("gossip to %s failed: %s", peer_id, exc)
