"""Round-trip times to this node's direct peers, for ``/metrics`` (``exo_peer_rtt_seconds``).

A ``PING`` goes to each direct peer as soon as it is connected (within ``tick``, a second) and then every
``interval`` seconds, one peer after the other, and waits at most ``timeout`` seconds for its ``PONG``: the
figure is the whole round trip through both nodes' event loops and whatever carries the link (a LAN, an SSH
link), which is what a hidden state pays per hop. A peer that does not answer in time, or is gone, has no
figure until it answers again. Every node answers PING, so no protocol change was needed.
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
        self,
        cluster: ClusterView,
        transport: Transport,
        *,
        interval: float = 10.0,
        timeout: float = 2.0,
        tick: float = 1.0,
    ) -> None:
        self.cluster = cluster
        self.transport = transport
        self.interval = interval
        self.timeout = timeout
        self.tick = tick
        self.rtt: dict[str, float] = {}
        self._pinged: dict[str, float] = {}  # peer -> when it was last pinged

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Every ``tick`` seconds, ping the peers that are new or whose figure is ``interval`` old."""
        task_status.started()
        while True:
            await self.measure(due_only=True)
            await anyio.sleep(self.tick)

    async def measure(self, *, due_only: bool = False) -> None:
        """A PING to each direct peer (with ``due_only``, to those new or last pinged ``interval`` ago)."""
        peers = sorted(self.cluster.own.neighbors)
        for gone in set(self._pinged) - set(peers):
            self._pinged.pop(gone, None)
            self.rtt.pop(gone, None)
        for peer in peers:
            started = time.monotonic()
            if due_only and started - self._pinged.get(peer, -self.interval) < self.interval:
                continue
            self._pinged[peer] = started
            try:
                await self.transport.request(peer, Ping(), timeout=self.timeout)
            except TransportError as exc:
                log.debug("no round trip to %s: %s", peer, exc)
                self.rtt.pop(peer, None)
                continue
            self.rtt[peer] = time.monotonic() - started
