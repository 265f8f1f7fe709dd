"""Sending a message to any node of the cluster: locally, directly, or relayed along the peer graph.

A message for this node is delivered in-process (no socket). A message for a directly connected peer
goes on that connection. Anything else goes to the next hop on the shortest path of direct connections
(from the gossiped topology) with ``dst`` set, and every node on the way forwards it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from anyio.abc import TaskGroup

from exo_core.errors import ExoError
from exo_core.protocol.codec import RoutedMessage
from exo_core.topology.cluster import ClusterView
from exo_core.transport.contract import Transport
from exo_core.transport.errors import TransportError
from exo_core.transport.types import Incoming

log = logging.getLogger(__name__)

#: How this node's parts send a message to a node of the cluster (the node's :meth:`Router.send`, bound).
Send = Callable[[str, RoutedMessage], Coroutine[Any, Any, None]]

LocalHandler = Callable[[RoutedMessage, str], Coroutine[Any, Any, None]]


class NoRouteError(ExoError):
    """No path of connections leads to the node."""


class Router:
    """Delivers messages by node id (see module docstring)."""

    def __init__(
        self, transport: Transport, cluster: ClusterView, tg: TaskGroup, local: LocalHandler
    ) -> None:
        self.transport = transport
        self.cluster = cluster
        self._tg = tg
        self._local = local

    @property
    def self_id(self) -> str:
        return self.cluster.self_id

    async def send(self, dst: str, msg: RoutedMessage) -> None:
        """Send ``msg`` to node ``dst``; raises :class:`NoRouteError` or a transport error."""
        if dst == self.self_id:
            self._tg.start_soon(self._local, msg, self.self_id)
            return
        if dst in self.transport.peers:
            await self.transport.send(dst, msg, dst=dst)
            return
        hop = self.cluster.next_hop(dst)
        if hop is None or hop not in self.transport.peers:
            raise NoRouteError(
                f"no route to node {dst}: it is not connected to this node or any of its peers"
            )
        await self.transport.send(hop, msg, dst=dst)

    async def relay(self, incoming: Incoming) -> None:
        """Pass on a message addressed to another node (the transport's relay handler)."""
        dst = incoming.envelope.dst
        hop = dst if dst in self.transport.peers else self.cluster.next_hop(dst)
        if hop is None or hop == self.self_id or hop not in self.transport.peers:
            log.warning(
                "cannot relay %s from %s to %s: no route",
                incoming.frame_type.name,
                incoming.envelope.src,
                dst,
            )
            return
        try:
            await self.transport.forward(hop, incoming)
        except TransportError as exc:
            log.warning("relaying %s to %s via %s failed: %s", incoming.frame_type.name, dst, hop, exc)
