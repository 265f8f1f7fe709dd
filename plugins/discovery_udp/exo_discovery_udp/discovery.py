"""The ``udp`` discovery module: periodic broadcast announcements on a LAN.

Every ``interval`` seconds the node sends an ANNOUNCE (its node id, node port, capabilities) to the
directed broadcast address of each selected interface (computed from the interface's own netmask) and to
each configured extra address, from a socket bound to the discovery port; it listens on the same port.
A peer is reported when first heard, again when its address or capabilities change, and lost when it
says BYE or is not heard from within ``peer_timeout``. See docs/discovery.md for the message format.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import secrets
import socket
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus, UDPSocket

from exo_core.discovery import DiscoveredPeer, DiscoverySink
from exo_core.errors import ConfigError
from exo_core.lan import netif, wire
from exo_core.lan.peers import LanPeerTable
from exo_discovery_udp.messages import Announce, Bye

log = logging.getLogger(__name__)

#: Runs of each peer remembered after a restart, so replays of an old run stay ignored.
_RETIRED_INSTANCES = 8
#: Bound on the node ids whose sequence numbers are tracked (least recently heard dropped first).
_MAX_TRACKED_NODES = 4096


class UdpDiscovery:
    """Finds peers by UDP broadcast.

    Args:
        node_id: this node's id (own announcements, echoed back by the network, are ignored by it).
        node_port: the transport port peers should dial.
        capabilities: this device's capabilities (peers.json ``device_capabilities`` format) or ``None``.
        cluster_key: shared secret; when set, announcements are authenticated and foreign ones ignored.
        port: the UDP discovery port (announcements are sent to and received on it).
        bind_host: address the socket binds; keep ``0.0.0.0`` to receive broadcasts.
        interfaces: interface names to announce on; empty = every interface that is up, except loopback.
        broadcast_addresses: extra IPv4 addresses to announce to (broadcast or unicast).
        interval: seconds between announcements.
        peer_timeout: seconds after which a silent peer is reported lost (must exceed ``interval``).

    Raises:
        ConfigError: inconsistent timing or an address that is not an IPv4 literal.
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
        interfaces: Sequence[str] = (),
        broadcast_addresses: Sequence[str] = (),
        interval: float = 2.5,
        peer_timeout: float = 15.0,
    ) -> None:
        if peer_timeout <= interval:
            raise ConfigError(
                f"--udp-peer-timeout ({peer_timeout:g} s) must be longer than --udp-broadcast-interval "
                f"({interval:g} s), or peers would be dropped between two announcements"
            )
        extra: list[str] = []
        for addr in broadcast_addresses:
            try:
                extra.append(str(ipaddress.IPv4Address(addr.strip())))
            except ValueError:
                raise ConfigError(
                    f"--broadcast-address: {addr!r} is not an IPv4 address (e.g. 192.168.1.255)"
                ) from None
        self.node_id = node_id
        self.node_port = node_port
        self.capabilities = wire.Capabilities.from_dict(capabilities)
        self.port = port
        self.bind_host = bind_host
        self.interfaces = list(interfaces)
        self.broadcast_addresses = extra
        self.interval = interval
        self.peer_timeout = peer_timeout
        self._auth = wire.ClusterAuth.from_key(cluster_key)
        self._inst = secrets.token_hex(8)
        self._seq = 0
        self._runs: OrderedDict[str, _Runs] = OrderedDict()  # node id -> its runs, least recent first
        self._bad = wire.BadInputLog(log)

    def targets(self) -> list[str]:
        """Where the next announcement goes: each selected interface's broadcast address, then the extras."""
        out: list[str] = []
        for iface in netif.select_interfaces(self.interfaces, flag="--discovery-interfaces"):
            if iface.broadcast is None:
                log.debug("interface %s (%s) has no broadcast address", iface.name, iface.interface)
                continue
            if not iface.is_up:
                log.debug("interface %s is down", iface.name)
                continue
            out.append(str(iface.broadcast))
        out.extend(self.broadcast_addresses)
        return list(dict.fromkeys(out))

    async def run(
        self, sink: DiscoverySink, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Announce, listen and expire peers until cancelled (see :class:`exo_core.discovery.Discovery`)."""
        targets = self.targets()  # a misspelled interface fails here, before started()
        if not targets:
            log.warning(
                "udp discovery: no interface with a broadcast address and no --broadcast-address; "
                "listening only (this node will not be found by others)"
            )
        if _unicast(self.bind_host):
            log.warning(
                "udp discovery binds %s, a unicast address: broadcast announcements (to %s) never arrive "
                "on it, so this node finds nobody; bind 0.0.0.0 (the default) to receive them",
                self.bind_host,
                ", ".join(targets) or "a broadcast address",
            )
        sock = await self._bind()
        table = LanPeerTable(sink, timeout=self.peer_timeout)
        async with sock:
            log.info(
                "udp discovery on %s:%d, announcing to %s every %g s",
                self.bind_host,
                self.port,
                ", ".join(targets) or "nobody",
                self.interval,
            )
            task_status.started()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._announce_loop, sock)
                    tg.start_soon(self._expire_loop, table)
                    await self._receive_loop(sock, table)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await self._send_all(sock, wire.MessageType.BYE, self._bye())

    async def _bind(self) -> UDPSocket:
        try:
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            raise ConfigError(f"udp discovery: cannot create a UDP socket: {exc}") from exc
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):  # several nodes on one machine share the port
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            raw.bind((self.bind_host, self.port))
            raw.setblocking(False)
            return await UDPSocket.from_socket(raw)
        except OSError as exc:
            raw.close()
            raise ConfigError(
                f"udp discovery: cannot listen on UDP {self.bind_host}:{self.port}: {exc} "
                "(choose another --udp-discovery-port or --udp-discovery-bind-host)"
            ) from exc

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _announce(self) -> Announce:
        return Announce(
            id=self.node_id, port=self.node_port, inst=self._inst, seq=self._next_seq(), cap=self.capabilities
        )

    def _bye(self) -> Bye:
        return Bye(id=self.node_id, inst=self._inst, seq=self._next_seq())

    async def _send_all(self, sock: UDPSocket, msg_type: wire.MessageType, body: Announce | Bye) -> None:
        data = wire.encode(self._auth, msg_type, body, max_body=wire.MAX_UDP_BODY)
        try:
            targets = self.targets()
        except ConfigError as exc:  # an interface disappeared after start: keep going with the rest
            log.warning("udp discovery: %s", exc)
            targets = self.broadcast_addresses
        for target in targets:
            try:
                await sock.sendto(data, target, self.port)
            except OSError as exc:
                self._bad(target, f"send:{exc.errno}", f"cannot send to {target}:{self.port}: {exc}")

    async def _announce_loop(self, sock: UDPSocket) -> None:
        while True:
            await self._send_all(sock, wire.MessageType.ANNOUNCE, self._announce())
            await anyio.sleep(self.interval * random.uniform(0.9, 1.1))  # jitter avoids lockstep senders

    async def _expire_loop(self, table: LanPeerTable) -> None:
        while True:
            await anyio.sleep(min(self.interval, self.peer_timeout / 4))
            await table.expire()

    async def _receive_loop(self, sock: UDPSocket, table: LanPeerTable) -> None:
        async for data, (host, _port) in sock:
            await self.handle_datagram(data, host, table)

    async def handle_datagram(self, data: bytes, host: str, table: LanPeerTable) -> None:
        """Validate one datagram from ``host`` and update ``table``; bad input is logged and ignored."""
        try:
            frame = wire.decode(data, self._auth, max_body=wire.MAX_UDP_BODY)
            if frame.type == wire.MessageType.ANNOUNCE:
                msg: Announce | Bye = wire.validate(Announce, frame)
            elif frame.type == wire.MessageType.BYE:
                msg = wire.validate(Bye, frame)
            else:
                raise wire.WireError(f"unexpected {frame.type.name} on the UDP discovery port")
        except wire.ForeignClusterError as exc:
            self._bad(host, "foreign", str(exc), level=logging.DEBUG)
            return
        except wire.WireError as exc:
            self._bad(host, "invalid", str(exc))
            return
        if msg.id == self.node_id:
            if msg.inst != self._inst:
                self._bad(host, "dup-id", f"another node announces this node's id {msg.id!r}")
            return
        if not self._fresh(msg.id, msg.inst, msg.seq):
            self._bad(host, "replay", f"stale or replayed message from {msg.id!r}", level=logging.DEBUG)
            return
        if isinstance(msg, Bye):
            await table.remove(msg.id, "said goodbye")
            return
        caps = msg.cap.model_dump() if msg.cap is not None else None
        await table.seen(
            DiscoveredPeer(key=msg.id, host=host, port=msg.port, node_id=msg.id, capabilities=caps)
        )

    def _fresh(self, node_id: str, inst: str, seq: int) -> bool:
        """Accept only increasing sequence numbers of a peer's current run (replays are ignored)."""
        state = self._runs.get(node_id)
        if state is None:
            state = self._runs[node_id] = _Runs(inst, -1, [])
            while len(self._runs) > _MAX_TRACKED_NODES:
                self._runs.popitem(last=False)
        self._runs.move_to_end(node_id)
        if inst in state.retired:
            return False
        if state.inst == inst:
            if seq <= state.seq:
                return False
        else:  # the peer restarted: its previous run's messages are stale from now on
            state.retired = [*state.retired, state.inst][-_RETIRED_INSTANCES:]
            state.inst = inst
        state.seq = seq
        return True


@dataclass
class _Runs:
    """The current run (instance id, highest sequence number) of one peer, and its previous runs."""

    inst: str
    seq: int
    retired: list[str]


def _unicast(host: str) -> bool:
    """True for a bind address on which a socket receives no broadcasts (any single host's address)."""
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return False  # a name or an IPv6 address: bind() reports what it does not accept
    return not (address.is_unspecified or str(address).endswith(".255") or address.is_multicast)
