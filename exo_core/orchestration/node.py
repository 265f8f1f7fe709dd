"""A node: transport, gossip, discovery, this node's stages, and the API, in one task group.

Start-up order (each component is started with ``await tg.start(...)`` so the next one can rely on it):
transport (bound, so discovery announces a live port) -> gossip and the stage sweeper -> discovery ->
API (so the first request already sees the cluster discovery found so far).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from exo_core.discovery import DiscoveredPeer, Discovery
from exo_core.engine import InferenceEngine
from exo_core.orchestration.backend import NodeBackend
from exo_core.orchestration.catalog import Catalog
from exo_core.orchestration.gossip import Gossip
from exo_core.orchestration.latency import PeerLatency
from exo_core.orchestration.requests import RequestTracker
from exo_core.orchestration.router import Router
from exo_core.orchestration.shards import ShardHost
from exo_core.orchestration.stages import StageRunner
from exo_core.protocol.codec import RoutedMessage
from exo_core.protocol.control import Error
from exo_core.protocol.header import FrameType
from exo_core.protocol.inference import Finish, Progress, Prompt, TensorMessage, Token, Topology
from exo_core.settings import CoreSettings
from exo_core.topology.cluster import DRAINING, ClusterView
from exo_core.topology.partition import Partitioner
from exo_core.transport.contract import Transport
from exo_core.transport.ssh.route import SshRoute
from exo_core.transport.types import Incoming, PeerEvent

log = logging.getLogger(__name__)


@dataclass
class _Sink:
    """Turns what discovery reports into addresses the transport keeps connected."""

    transport: Transport
    known: dict[str, DiscoveredPeer] = field(default_factory=dict)

    async def peer_found(self, peer: DiscoveredPeer) -> None:
        old = self.known.get(peer.key)
        if old is not None and _route(old) == _route(peer):
            self.known[peer.key] = peer  # its declared capabilities may have changed
            return
        if old is not None:
            self.transport.forget(old.host, old.port, ssh=old.ssh)
        self.known[peer.key] = peer
        log.info("discovered %s at %s", peer.key, peer.address)
        self.transport.keep(peer.host, peer.port, ssh=peer.ssh)

    async def peer_lost(self, key: str) -> None:
        peer = self.known.pop(key, None)
        if peer is not None and _route(peer) not in {_route(p) for p in self.known.values()}:
            log.info("discovery lost %s (%s)", key, peer.address)
            self.transport.forget(peer.host, peer.port, ssh=peer.ssh)

    def declared(self) -> dict[str, dict[str, Any]]:
        """The capabilities discovery declared for peers (peers.json ``device_capabilities``), by the node id
        their address led to."""
        out: dict[str, dict[str, Any]] = {}
        for peer in self.known.values():
            if peer.capabilities:
                node_id = self.transport.peer_at(peer.host, peer.port, ssh=peer.ssh)
                if node_id is not None:
                    out[node_id] = peer.capabilities
        return out


def _route(peer: DiscoveredPeer) -> tuple[str, int, SshRoute | None]:
    return (peer.host, peer.port, peer.ssh)


class Node:
    """Everything one exo node runs (see module docstring)."""

    def __init__(
        self,
        core: CoreSettings,
        *,
        node_id: str,
        transport: Transport,
        discovery: Discovery | None,
        partitioner: Partitioner,
        engine_factory: Callable[[], InferenceEngine],
        engine_name: str,
        capabilities: dict[str, Any],
        gossip_interval: float = 1.0,
    ) -> None:
        self.core = core
        self.node_id = node_id
        self.transport = transport
        self.discovery = discovery
        caps = {**capabilities, "engine": engine_name}
        transport.capabilities = dict(caps)
        self.cluster = ClusterView(node_id, caps)
        self.catalog = Catalog(core.default_model, core.model_path)
        self.shards = ShardHost(engine_factory, self.catalog, on_held_ratio=self._held_ratio)
        self.tracker = RequestTracker()
        self._cluster_changed = anyio.Event()
        self.gossip = Gossip(
            self.cluster, transport, interval=gossip_interval, on_change=self._on_cluster_change
        )
        self.latency = PeerLatency(self.cluster, transport)
        self.stages = StageRunner(
            node_id,
            self.shards,
            self.send,
            slots=core.compute_slots,
            prefill_chunk=core.prefill_chunk,
        )
        self.backend = NodeBackend(
            self.cluster,
            self.catalog,
            partitioner,
            self.tracker,
            self.send,
            request_timeout=core.request_timeout,
            token_timeout=core.token_timeout,
            failover_retries=core.failover_retries,
            engine_name=engine_name,
            shards=self.shards.describe,
            peer_rtt=lambda: dict(self.latency.rtt),
        )
        self._router: Router | None = None
        self.api_port: int | None = None
        self.started = anyio.Event()

    def _held_ratio(self, model_id: str, ratio: float) -> None:
        """Tell the cluster what this node's engine holds per stored byte of the model it just loaded, for
        the memory check of the plans (:func:`~exo_core.orchestration.checks.check_memory`)."""
        if self.cluster.set_held_ratio(model_id, ratio):
            log.info("%s: the engine holds %.2f bytes per stored byte", model_id, ratio)
            self.gossip.announce()

    def _on_cluster_change(self) -> None:
        # a node several hops away that vanished shows up here (through gossip), not as a peer event; a
        # node leaving the cluster too (its requests move now, while it still serves them)
        self.tracker.fail_unreachable(self.cluster.reachable(), self.cluster.leaving() - {self.node_id})
        self._cluster_changed.set()
        self._cluster_changed = anyio.Event()

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - the grace period is the point
        """Leave the cluster gracefully: refuse new API requests (503), tell every node (the ``draining``
        capability, gossiped at once) so they stop planning through this node and move the requests that use
        it, then wait up to ``timeout`` seconds for this node's own API requests and for the stages it runs
        for other nodes' requests to end. The caller then stops the node."""
        self.backend.draining = True
        if self.cluster.set_capability(DRAINING, True):
            self.gossip.announce()
        log.info(
            "draining: %d API requests and %d requests' stages in flight; waiting up to %g s",
            len(self.tracker),
            self.stages.in_flight(),
            timeout,
        )
        with anyio.move_on_after(timeout):
            while True:  # polled: requests end on many paths (finish, failure, client gone, FINISH)
                if not (len(self.tracker) or self.stages.in_flight()):
                    break
                await anyio.sleep(0.05)
        if len(self.tracker) or self.stages.in_flight():
            log.warning(
                "drain timeout (%g s): stopping with %d API requests and %d requests' stages in flight",
                timeout,
                len(self.tracker),
                self.stages.in_flight(),
            )
        else:
            log.info("drained: nothing in flight")

    async def wait_for_nodes(self, n: int) -> None:
        """Wait until ``n`` nodes (this one included) are reachable; bound it with a cancel scope."""
        while len(self.cluster.reachable()) < n:
            await self._cluster_changed.wait()

    async def send(self, dst: str, msg: RoutedMessage) -> None:
        if self._router is None:
            raise RuntimeError("the node is not running")
        await self._router.send(dst, msg)

    async def deliver(self, msg: RoutedMessage, sender: str) -> None:
        """Handle a message for this node (from a peer, or from this node itself)."""
        if isinstance(msg, Prompt):
            await self.stages.on_prompt(msg)
        elif isinstance(msg, TensorMessage):
            await self.stages.on_tensor(msg)
        elif isinstance(msg, Token):
            if msg.ctx.origin == self.node_id:
                self.tracker.token(msg)
            await self.stages.on_token(msg)
        elif isinstance(msg, Finish):
            await self.stages.on_finish(msg)
        elif isinstance(msg, Error):
            log.warning("error from %s for request %s: %s", sender, msg.request_id or "-", msg.message)
            if msg.request_id:
                self.tracker.error(msg, sender)
        elif isinstance(msg, Topology):
            self.gossip.on_topology(msg, sender)
        elif isinstance(msg, Progress):
            self.tracker.progress(msg)

    async def _incoming(self, incoming: Incoming) -> None:
        """Transport handler: every inference and gossip message is one-way (no reply)."""
        await self.deliver(incoming.message, incoming.envelope.src or incoming.peer.node_id)

    def _on_peer_event(self, event: PeerEvent) -> None:
        # updates the topology; requests using a node that became unreachable fail in _on_cluster_change
        self.gossip.on_peer_event(event)

    def _wire(self, tg: TaskGroup) -> None:
        self._router = Router(self.transport, self.cluster, tg, self.deliver)
        for ftype in (
            FrameType.PROMPT,
            FrameType.TENSOR,
            FrameType.TOKEN,
            FrameType.FINISH,
            FrameType.TOPOLOGY,
            FrameType.ERROR,
            FrameType.PROGRESS,
        ):
            self.transport.on(ftype, self._incoming)
        self.transport.set_relay(self._router.relay)
        self.transport.add_peer_listener(self._on_peer_event)

    async def run(
        self, *, api: bool = True, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled."""
        async with anyio.create_task_group() as tg:
            self._wire(tg)
            await tg.start(self.transport.run)
            self.cluster.set_address(self.transport.advertised_address)
            await tg.start(self.gossip.run)
            await tg.start(self.stages.sweep)
            await tg.start(self.latency.run)
            if self.discovery is not None:
                sink = _Sink(self.transport)
                self.cluster.declared_source = sink.declared
                await tg.start(self.discovery.run, sink)
            if api:
                from exo_core.api import create_app, serve_api
                from exo_core.api.http_guard import ConnectionLimits
                from exo_core.api.keys import load_api_keys
                from exo_core.api.origin import split_list

                key = self.core.api_key.get_secret_value() if self.core.api_key else None
                keys_file = self.core.api_keys_file
                app = create_app(
                    self.backend,
                    api_key=key,
                    api_keys=load_api_keys(keys_file) if keys_file is not None else None,
                    body_timeout=self.core.api_body_timeout,
                    max_in_flight=self.core.api_max_in_flight,
                    max_queued=self.core.api_max_queued,
                    client_share=self.core.api_client_share,
                    bind_host=self.core.chatgpt_api_host,
                    allowed_hosts=split_list(self.core.api_allowed_hosts),
                    cors_origins=split_list(self.core.api_cors_origins),
                )
                self.api_port = await tg.start(
                    functools.partial(
                        serve_api,
                        shutdown_timeout=1.0,  # streams had their grace in drain()
                        limits=ConnectionLimits(
                            header_timeout=self.core.api_header_timeout,
                            max_connections=self.core.api_max_connections,
                        ),
                    ),
                    app,
                    self.core.chatgpt_api_host,
                    self.core.chatgpt_api_port,
                )
            log.info("node %s ready (transport port %d)", self.node_id, self.transport.port)
            self.started.set()
            task_status.started()
