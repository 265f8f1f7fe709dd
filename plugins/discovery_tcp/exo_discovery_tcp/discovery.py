"""The ``tcp`` discovery module: short hello exchanges over TCP, with gossip.

The node listens on the discovery port. Every ``hello_interval`` seconds it runs a hello exchange with
each configured target endpoint, each live peer and each peer it was told about (gossip); every
``scan_interval`` seconds it also tries every host of the configured CIDR ranges and, by default, of the
local subnets of its interfaces. Each exchange tells both sides who the other is and which live peers
it knows, so one seed address is enough to find the whole cluster. A peer not heard from (in either
direction) within ``peer_timeout`` is reported lost. Connections are bounded in number and time.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Sequence
from typing import Any, TypeVar

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import BaseModel

from exo_core.discovery import DiscoveredPeer, DiscoverySink
from exo_core.errors import ConfigError
from exo_core.lan import netif, wire
from exo_core.lan.peers import LanPeerTable
from exo_discovery_tcp.messages import MAX_GOSSIP, Ack, Hello, HelloReply, PeerRef
from exo_discovery_tcp.targets import Endpoint, parse_targets, subnet_hosts

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: Bound on addresses learned by gossip and not yet contacted.
MAX_CANDIDATES = 256
_ANY = {"0.0.0.0", "::", ""}


class ExchangeError(Exception):
    """One hello exchange failed (logged, never fatal)."""


class TcpDiscovery:
    """Finds peers by TCP hello exchanges and gossip.

    Args:
        node_id: this node's id.
        node_port: the transport port peers should dial.
        capabilities: this device's capabilities (peers.json ``device_capabilities`` format) or ``None``.
        cluster_key: shared secret; when set, every frame is authenticated and foreign nodes are ignored.
        port: the TCP discovery port this node listens on (and the default port of targets).
        bind_host: address to listen on; when it is a specific address, outgoing exchanges use it as
            their source address too.
        targets: ``host``, ``host:port`` or CIDR ranges to announce to.
        scan_local_subnets: also scan the subnets of ``interfaces``.
        interfaces: interface names whose subnets are scanned; empty = every interface up, not loopback.
        max_scan_hosts: most hosts tried per CIDR range or subnet.
        hello_interval: seconds between two hello rounds (targets, live peers, gossiped peers).
        scan_interval: seconds between two scans of ranges and subnets.
        peer_timeout: seconds without an exchange after which a peer is reported lost.
        concurrency: most exchanges in flight at once, per kind of round (hellos, scans, incoming).
        connect_timeout: seconds for a connection to open; a whole exchange gets twice that.
    """

    def __init__(
        self,
        *,
        node_id: str,
        node_port: int,
        capabilities: dict[str, Any] | None,
        cluster_key: str | None = None,
        port: int = 5678,
        bind_host: str = "0.0.0.0",
        targets: Sequence[str] = (),
        scan_local_subnets: bool = True,
        interfaces: Sequence[str] = (),
        max_scan_hosts: int = 1024,
        hello_interval: float = 5.0,
        scan_interval: float = 30.0,
        peer_timeout: float = 20.0,
        concurrency: int = 32,
        connect_timeout: float = 1.0,
    ) -> None:
        if peer_timeout <= hello_interval:
            raise ConfigError(
                f"--tcp-peer-timeout ({peer_timeout:g} s) must be longer than --tcp-hello-interval "
                f"({hello_interval:g} s), or peers would be dropped between two hellos"
            )
        self.node_id = node_id
        self.node_port = node_port
        self.capabilities = wire.Capabilities.from_dict(capabilities)
        self.port = port
        self.bind_host = bind_host
        self.targets = parse_targets(targets, default_port=port, max_hosts=max_scan_hosts)
        self.scan_local_subnets = scan_local_subnets
        self.interfaces = list(interfaces)
        self.max_scan_hosts = max_scan_hosts
        self.hello_interval = hello_interval
        self.scan_interval = scan_interval
        self.peer_timeout = peer_timeout
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self._auth = wire.ClusterAuth.from_key(cluster_key)
        self._bad = wire.BadInputLog(log)
        self._table: LanPeerTable | None = None
        self._dports: dict[str, Endpoint] = {}  # node id -> its discovery endpoint
        self._candidates: dict[Endpoint, None] = {}  # learned by gossip, not yet contacted
        self._tried: dict[Endpoint, float] = {}  # gossiped endpoints last dialed at (not re-queued too soon)
        self._self_endpoints: set[Endpoint] = set()
        self._wake = anyio.Event()

    # ----- lifecycle -----

    async def run(
        self, sink: DiscoverySink, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, say hello and scan until cancelled (see :class:`exo_core.discovery.Discovery`)."""
        scan_ifaces = self._scan_interfaces()  # a misspelled interface fails here, before started()
        if self.bind_host in _ANY:
            self._self_endpoints |= {(str(i.address), self.port) for i in netif.ipv4_interfaces()}
        else:
            self._self_endpoints.add((self.bind_host, self.port))
        try:
            listener = await anyio.create_tcp_listener(local_host=self.bind_host, local_port=self.port)
        except OSError as exc:
            raise ConfigError(
                f"tcp discovery: cannot listen on TCP {self.bind_host}:{self.port}: {exc} "
                "(choose another --tcp-discovery-port or --tcp-discovery-bind-host)"
            ) from exc
        self._table = LanPeerTable(sink, timeout=self.peer_timeout)
        async with listener, anyio.create_task_group() as tg:
            log.info(
                "tcp discovery on %s:%d: %d target(s), %d range host(s), scanning subnets of %s",
                self.bind_host,
                self.port,
                len(self.targets.endpoints),
                len(self.targets.ranges),
                ", ".join(i.name for i in scan_ifaces) or "no interface",
            )
            task_status.started()
            incoming = anyio.CapacityLimiter(self.concurrency)
            tg.start_soon(listener.serve, lambda s: self._serve(s, incoming), tg)
            tg.start_soon(self._hello_loop)
            if self.targets.ranges or self.scan_local_subnets:
                tg.start_soon(self._scan_loop)

    async def _hello_loop(self) -> None:
        limiter = anyio.CapacityLimiter(self.concurrency)
        assert self._table is not None
        while True:
            self._wake = anyio.Event()
            live = {self._dports[p.key] for p in self._table.peers() if p.key in self._dports}
            batch = [*self.targets.endpoints, *live, *self._candidates]
            now = anyio.current_time()
            self._tried = {e: t for e, t in self._tried.items() if now - t < self.peer_timeout}
            self._tried.update(dict.fromkeys(self._candidates, now))
            while len(self._tried) > 16 * MAX_CANDIDATES:  # bounded, oldest first
                del self._tried[next(iter(self._tried))]
            self._candidates.clear()
            await self._contact_all(batch, limiter)
            await self._table.expire()
            self._dports = {k: v for k, v in self._dports.items() if k in self._table}
            with anyio.move_on_after(self.hello_interval):
                await self._wake.wait()  # gossip taught us new addresses: contact them now
            await anyio.sleep(min(0.05, self.hello_interval))  # never spin

    def _scan_interfaces(self) -> list[netif.Interface]:
        if not self.scan_local_subnets:
            return []
        chosen = netif.select_interfaces(self.interfaces, flag="--tcp-discovery-interfaces")
        return [i for i in chosen if i.is_up]

    async def _scan_loop(self) -> None:
        limiter = anyio.CapacityLimiter(self.concurrency)
        while True:
            try:
                interfaces = self._scan_interfaces()  # re-read: addresses change (DHCP, VPN up/down)
            except ConfigError as exc:
                log.warning("tcp discovery: %s", exc)
                interfaces = []
            hosts = [
                *self.targets.ranges,
                *subnet_hosts(interfaces, port=self.port, max_hosts=self.max_scan_hosts),
            ]
            await self._contact_all(hosts, limiter)
            await anyio.sleep(self.scan_interval)

    async def _contact_all(self, endpoints: Sequence[Endpoint], limiter: anyio.CapacityLimiter) -> None:
        todo = [e for e in dict.fromkeys(endpoints) if e not in self._self_endpoints]

        async def one(endpoint: Endpoint) -> None:
            async with limiter:
                await self._dial(endpoint)

        async with anyio.create_task_group() as tg:
            for endpoint in todo:
                tg.start_soon(one, endpoint)

    # ----- one exchange -----

    def _hello(self, nonce: str) -> dict[str, Any]:
        assert self._table is not None
        refs = []
        for peer in self._table.peers()[:MAX_GOSSIP]:
            endpoint = self._dports.get(peer.key)
            if endpoint is not None:
                refs.append(PeerRef(id=peer.key, host=peer.host, port=peer.port, dport=endpoint[1]))
        return {
            "id": self.node_id,
            "port": self.node_port,
            "dport": self.port,
            "nonce": nonce,
            "cap": self.capabilities,
            "peers": refs,
        }

    async def _dial(self, endpoint: Endpoint) -> None:
        host, port = endpoint
        local = None if self.bind_host in _ANY else self.bind_host
        try:
            with anyio.fail_after(self.connect_timeout):
                stream = await anyio.connect_tcp(host, port, local_host=local)
        except (OSError, TimeoutError) as exc:
            log.debug("tcp discovery: cannot reach %s:%d: %s", host, port, exc or "timeout")
            return
        async with stream:
            try:
                with anyio.fail_after(2 * self.connect_timeout):
                    await self._dialer_exchange(stream, endpoint)
            except TimeoutError:
                self._bad(
                    host, "timeout", f"hello exchange with {host}:{port} timed out", level=logging.DEBUG
                )
            except (ExchangeError, wire.WireError) as exc:
                level = logging.DEBUG if isinstance(exc, wire.ForeignClusterError) else logging.WARNING
                self._bad(host, type(exc).__name__, f"hello exchange with {host}:{port}: {exc}", level=level)
            except (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead) as exc:
                log.debug("tcp discovery: exchange with %s:%d broke: %r", host, port, exc)

    async def _dialer_exchange(self, stream: SocketStream, endpoint: Endpoint) -> None:
        nonce = secrets.token_hex(16)
        await self._send(stream, wire.MessageType.HELLO, Hello(**self._hello(nonce)))
        reply = await self._receive(
            BufferedByteReceiveStream(stream), wire.MessageType.HELLO_REPLY, HelloReply
        )
        if reply.echo != nonce:
            raise ExchangeError("the reply echoes the wrong nonce (stale or replayed)")
        if reply.id == self.node_id:
            self._self_endpoints.add(endpoint)  # we dialed ourselves (a subnet scan, or gossip)
            await self._send(stream, wire.MessageType.ACK, Ack(id=self.node_id, echo=reply.nonce))
            return
        await self._send(stream, wire.MessageType.ACK, Ack(id=self.node_id, echo=reply.nonce))
        await self._learn(reply, _remote_ip(stream))

    async def _serve(self, stream: SocketStream, limiter: anyio.CapacityLimiter) -> None:
        host = _remote_ip(stream)
        async with stream:
            if limiter.available_tokens < 1:
                self._bad(
                    host, "busy", "too many discovery connections at once; closing", level=logging.DEBUG
                )
                return
            async with limiter:
                try:
                    with anyio.fail_after(2 * self.connect_timeout):
                        await self._listener_exchange(stream, host)
                except TimeoutError:
                    self._bad(host, "timeout", "hello exchange timed out (slow or silent client)")
                except (ExchangeError, wire.WireError) as exc:
                    level = logging.DEBUG if isinstance(exc, wire.ForeignClusterError) else logging.WARNING
                    self._bad(host, type(exc).__name__, str(exc), level=level)
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead) as exc:
                    log.debug("tcp discovery: exchange from %s broke: %r", host, exc)

    async def _listener_exchange(self, stream: SocketStream, host: str) -> None:
        reader = BufferedByteReceiveStream(stream)  # one per connection: it may hold read-ahead bytes
        hello = await self._receive(reader, wire.MessageType.HELLO, Hello)
        nonce = secrets.token_hex(16)
        await self._send(
            stream, wire.MessageType.HELLO_REPLY, HelloReply(**self._hello(nonce), echo=hello.nonce)
        )
        ack = await self._receive(reader, wire.MessageType.ACK, Ack)
        if ack.echo != nonce or ack.id != hello.id:
            raise ExchangeError("the ACK echoes the wrong nonce or id (stale or replayed)")
        if hello.id != self.node_id:
            await self._learn(hello, host)

    async def _send(self, stream: SocketStream, msg_type: wire.MessageType, body: BaseModel) -> None:
        await stream.send(wire.encode(self._auth, msg_type, body, max_body=wire.MAX_TCP_BODY))

    async def _receive(
        self, reader: BufferedByteReceiveStream, msg_type: wire.MessageType, model: type[M]
    ) -> M:
        head = await reader.receive_exactly(wire.HEADER_SIZE)
        header = wire.parse_header(head, self._auth, max_body=wire.MAX_TCP_BODY)
        rest = await reader.receive_exactly(header.frame_size - wire.HEADER_SIZE)
        frame = wire.decode(head + rest, self._auth, max_body=wire.MAX_TCP_BODY)
        if frame.type != msg_type:
            raise ExchangeError(f"expected {msg_type.name}, got {frame.type.name}")
        return wire.validate(model, frame)

    # ----- what an exchange teaches -----

    async def _learn(self, hello: Hello, host: str) -> None:
        assert self._table is not None
        caps = hello.cap.model_dump() if hello.cap is not None else None
        self._dports[hello.id] = (host, hello.dport)
        await self._table.seen(
            DiscoveredPeer(key=hello.id, host=host, port=hello.port, node_id=hello.id, capabilities=caps)
        )
        new = False
        for ref in hello.peers:
            endpoint = (ref.host, ref.dport)
            if ref.id == self.node_id or ref.id in self._table or endpoint in self._self_endpoints:
                continue
            if endpoint in self._tried or endpoint in self._candidates:
                continue  # a gossiped address we could not reach is not retried before peer_timeout
            if len(self._candidates) < MAX_CANDIDATES:
                self._candidates[endpoint] = None
                new = True
        if new:
            self._wake.set()


def _remote_ip(stream: SocketStream) -> str:
    address = stream.extra(SocketAttribute.remote_address)
    host = address[0] if isinstance(address, tuple) else str(address)
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
