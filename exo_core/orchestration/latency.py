"""Round-trip times to this node's direct peers, for ``/metrics`` (``exo_peer_rtt_seconds``).

Every ``interval`` seconds a ``PING`` goes to each direct peer, one after the other, and waits at most
``timeout`` seconds for its ``PONG``: the figure is the whole round trip through both nodes' event loops
and whatever carries the link (a LAN, an SSH link), which is what a hidden state pays per hop. A peer that
does not answer in time, or is gone, has no figure until it answers again. Every node answers PING, so no
protocol change was needed.
"""

from __future__ import annotations

import logging
import time

import anyio
from anyio.abc import TaskStatus

from exo_core.protocol.control import Ping
from exo_core.topology.cluster import ClusterView
from exo_core.transport.contract import Transport
from exo_core.transport.errors import TransportError

log = logging.getLogger(__name__)


class PeerLatency:
    """Measures :attr:`rtt` (peer id -> seconds of the last round trip); see the module docstring."""

    def __init__(
        self, cluster: ClusterView, transport: Transport, *, interval: float = 10.0, timeout: float = 2.0
    ) -> None:
        self.cluster = cluster
        self.transport = transport
        self.interval = interval
        self.timeout = timeout
        self.rtt: dict[str, float] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Measure every ``interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await self.measure()
            await anyio.sleep(self.interval)

    async def measure(self) -> None:
        """One round: a PING to each direct peer."""
        peers = sorted(self.cluster.own.neighbors)
        for gone in set(self.rtt) - set(peers):
            del self.rtt[gone]
        for peer in peers:
            started = time.monotonic()
            try:
                await self.transport.request(peer, Ping(), timeout=self.timeout)
            except TransportError as exc:
                log.debug("no round trip to %s: %s", peer, exc)
                self.rtt.pop(peer, None)
                continue
            self.rtt[peer] = time.monotonic() - started
