"""The cluster as this node sees it: every node's capabilities and direct connections, by link-state gossip.

Each node owns one :class:`NodeRecord` (its capabilities and the peers it is directly connected to) with a
sequence number it alone increases. Nodes send the records they know to their direct peers; a record
replaces the known one of the same origin only if its sequence number is higher, so gossip converges and
stale news never wins. The graph of records gives the topology (`GET /v1/topology`), the nodes a plan may
use (those reachable from here) and the next hop for relaying to a node with no direct connection.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from exo_core.topology.partition import NodeResources

#: capability a node gossips as ``True`` once it is shutting down (SIGTERM): peers stop planning through it
#: and move the requests that use it at once (docs/protocol.md, "Leaving the cluster")
DRAINING = "draining"
#: capability: ``{model id: bytes the engine holds per stored byte}``, measured by the node on each load
HELD_RATIO = "held_ratio"
#: larger ratios from a peer are ignored as malformed (float32 weights from a 2-bit file are ~16x)
MAX_HELD_RATIO = 64.0


@dataclass(frozen=True)
class NodeRecord:
    """One node's own account of itself."""

    node_id: str
    seq: int
    capabilities: dict[str, Any]
    neighbors: frozenset[str]
    address: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "seq": self.seq,
            "capabilities": self.capabilities,
            "neighbors": sorted(self.neighbors),
            "address": self.address,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRecord:
        """Parse a gossiped record; raises ``ValueError`` on malformed input."""
        try:
            node_id = data["node_id"]
            seq = data["seq"]
            caps = data.get("capabilities") or {}
            neighbors = data.get("neighbors") or []
            address = data.get("address") or ""
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed node record: {exc!r}") from None
        if not isinstance(node_id, str) or not node_id or not isinstance(seq, int) or seq < 0:
            raise ValueError(
                "malformed node record: node_id must be a non-empty string and seq an integer >= 0"
            )
        if not isinstance(caps, dict) or not isinstance(neighbors, list) or not isinstance(address, str):
            raise ValueError("malformed node record: capabilities, neighbors or address of the wrong type")
        if not all(isinstance(n, str) for n in neighbors):
            raise ValueError("malformed node record: neighbors must be strings")
        return cls(node_id, seq, caps, frozenset(neighbors), address)

    @property
    def memory_mb(self) -> int:
        memory = self.capabilities.get("memory", 0)
        return int(memory) if isinstance(memory, int | float) and memory > 0 else 0

    def held_ratios(self) -> dict[str, float]:
        """Bytes the node's engine holds per stored byte, by model (capability :data:`HELD_RATIO`, set
        after a load); malformed entries left out."""
        said = self.capabilities.get(HELD_RATIO)
        if not isinstance(said, dict):
            return {}
        return {
            model: float(value)
            for model, value in said.items()
            if isinstance(model, str)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and 0 < value <= MAX_HELD_RATIO
        }

    def held_ratio(self, model: str) -> float | None:
        """:meth:`held_ratios` of ``model``, or None when the node has not said (or said nonsense)."""
        return self.held_ratios().get(model)


@dataclass
class ClusterView:
    """This node's view of the cluster."""

    self_id: str
    capabilities: dict[str, Any]
    address: str = ""
    records: dict[str, NodeRecord] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)
    #: what this node's configuration declares about other nodes (peers.json ``device_capabilities``), by
    #: node id, asked for whenever it is needed (the node matches entries to ids as peers connect)
    declared_source: Callable[[], dict[str, dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        # a restarted node must beat its own old records still in circulation: start from the clock
        self.records[self.self_id] = NodeRecord(
            self.self_id, time.time_ns(), self.capabilities, frozenset(), self.address
        )

    @property
    def own(self) -> NodeRecord:
        return self.records[self.self_id]

    def set_address(self, address: str) -> None:
        """Set the address this node advertises (once its listener is bound)."""
        self.address = address
        own = self.own
        self.records[self.self_id] = NodeRecord(
            self.self_id, own.seq + 1, self.capabilities, own.neighbors, address
        )

    def set_neighbors(self, neighbors: Iterable[str]) -> bool:
        """Update this node's direct connections; returns whether anything changed."""
        new = frozenset(n for n in neighbors if n != self.self_id)
        if new == self.own.neighbors:
            return False
        self.records[self.self_id] = NodeRecord(
            self.self_id, max(self.own.seq + 1, time.time_ns()), self.capabilities, new, self.address
        )
        return True

    def set_capability(self, key: str, value: Any) -> bool:
        """Set one of this node's own capabilities (gossiped with its record); returns whether it changed."""
        if self.capabilities.get(key) == value:
            return False
        self.capabilities = {**self.capabilities, key: value}
        own = self.own
        self.records[self.self_id] = NodeRecord(
            self.self_id, max(own.seq + 1, time.time_ns()), self.capabilities, own.neighbors, self.address
        )
        return True

    def set_held_ratio(self, model: str, ratio: float) -> bool:
        """Record (and gossip) what this node's engine holds per stored byte of ``model``."""
        current = self.capabilities.get(HELD_RATIO)
        ratios = dict(current) if isinstance(current, dict) else {}
        ratios[model] = round(ratio, 3)
        return self.set_capability(HELD_RATIO, ratios)

    def held_ratios(self, model: str) -> dict[str, float]:
        """Each node's :meth:`NodeRecord.held_ratio` for ``model``, where it said one."""
        out = {}
        for node_id, rec in self.records.items():
            ratio = rec.held_ratio(model)
            if ratio is not None:
                out[node_id] = ratio
        return out

    def leaving(self) -> set[str]:
        """Nodes that announced they are shutting down (capability ``draining``): no new plan uses them."""
        return {n for n, rec in self.records.items() if rec.capabilities.get(DRAINING) is True}

    def merge(self, record: NodeRecord, now: float | None = None) -> bool:
        """Take a gossiped record if it is newer than what we know; returns whether it was taken."""
        if record.node_id == self.self_id:
            return False  # nobody knows better than us
        known = self.records.get(record.node_id)
        if known is not None and known.seq >= record.seq:
            return False
        self.records[record.node_id] = record
        self.received_at[record.node_id] = time.monotonic() if now is None else now
        return True

    def prune(self, max_age: float, now: float | None = None) -> list[str]:
        """Forget records of nodes that are unreachable from here and have not been refreshed lately."""
        now = time.monotonic() if now is None else now
        reachable = self.reachable()
        gone = [n for n, t in self.received_at.items() if n not in reachable and now - t > max_age]
        for n in gone:
            self.records.pop(n, None)
            self.received_at.pop(n, None)
        return gone

    def edges(self) -> frozenset[frozenset[str]]:
        """Direct connections. ``x`` listing ``y`` counts unless ``y``'s record says otherwise; this
        node's own record is authoritative for its own connections."""
        out: set[frozenset[str]] = set()
        for rec in self.records.values():
            for other in rec.neighbors:
                other_rec = self.records.get(other)
                agreed = other_rec is None or rec.node_id in other_rec.neighbors
                if other != rec.node_id and (agreed or rec.node_id == self.self_id):
                    out.add(frozenset((rec.node_id, other)))
        return frozenset(out)

    def _adjacency(self) -> dict[str, set[str]]:
        adj: dict[str, set[str]] = {n: set() for n in self.records}
        for edge in self.edges():
            a, b = tuple(edge)
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        return adj

    def reachable(self) -> set[str]:
        """Nodes with a path of direct connections from this node (this node included)."""
        adj = self._adjacency()
        seen, queue = {self.self_id}, deque([self.self_id])
        while queue:
            for nxt in sorted(adj.get(queue.popleft(), ())):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
        return seen

    def next_hop(self, dst: str) -> str | None:
        """The direct peer to send to for ``dst`` (shortest path, ties by node id), or ``None``."""
        if dst == self.self_id:
            return dst
        adj = self._adjacency()
        first: dict[str, str] = {}
        queue: deque[str] = deque()
        for n in sorted(adj.get(self.self_id, ())):
            first[n] = n
            queue.append(n)
        while queue:
            node = queue.popleft()
            if node == dst:
                return first[node]
            for nxt in sorted(adj.get(node, ())):
                if nxt != self.self_id and nxt not in first:
                    first[nxt] = first[node]
                    queue.append(nxt)
        return None

    def declared(self) -> dict[str, dict[str, Any]]:
        """Declared capabilities by node id (see :attr:`declared_source`)."""
        return self.declared_source() if self.declared_source is not None else {}

    def planned_memory_mb(self, node_id: str, declared: dict[str, dict[str, Any]] | None = None) -> int:
        """The memory the plan counts for a node: the lower of what it reports and what this node's
        configuration declares for it (either alone when the other is unknown)."""
        reported = self.records[node_id].memory_mb if node_id in self.records else 0
        caps = (self.declared() if declared is None else declared).get(node_id) or {}
        memory = caps.get("memory")
        if isinstance(memory, int | float) and not isinstance(memory, bool) and memory > 0:
            return int(memory) if reported <= 0 else min(reported, int(memory))
        return reported

    def resources(self) -> list[NodeResources]:
        """Reachable nodes with their memory, for the partitioner (not those leaving)."""
        usable = self.reachable() - self.leaving()
        declared = self.declared()
        return [
            NodeResources(n, self.planned_memory_mb(n, declared)) for n in sorted(usable) if n in self.records
        ]

    def to_json(self) -> dict[str, Any]:
        reachable = self.reachable()
        return {
            "self": self.self_id,
            "nodes": [
                {**rec.to_dict(), "reachable": rec.node_id in reachable}
                for rec in sorted(self.records.values(), key=lambda r: r.node_id)
            ],
            "connections": sorted(sorted(e) for e in self.edges()),
        }
