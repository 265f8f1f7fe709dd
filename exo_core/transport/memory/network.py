"""The memory network (which nodes are linked, links cut, nodes vanishing) and the transports on it."""

from __future__ import annotations

import functools
import itertools
import logging
import secrets

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from exo_core import __version__
from exo_core.protocol.binary import Value
from exo_core.protocol.control import PROTOCOL_VERSION
from exo_core.protocol.errors import ErrorCode
from exo_core.protocol.frame import DEFAULT_MAX_FRAME_SIZE
from exo_core.transport.errors import HandshakeError
from exo_core.transport.memory.endpoint import Endpoint
from exo_core.transport.memory.links import HOST, End, Pair, Pipe, pair
from exo_core.transport.ssh.route import SshRoute
from exo_core.transport.types import PeerEvent, PeerInfo

log = logging.getLogger("exo_core.transport.memory")


def _no_ssh(ssh: SshRoute | None) -> None:
    if ssh is not None:
        raise ValueError(f"the memory transport has no SSH links (asked for {ssh})")


class MemoryNetwork:
    """Creates :class:`MemoryTransport` s by node id and decides which of them are linked.

    Args:
        latency: seconds each frame takes to arrive (order is kept whatever the latency).
        request_timeout: default seconds a request waits for its reply.
        max_frame_size: largest frame a receiver accepts; a larger one drops the link, as TCP closes the
            connection.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        request_timeout: float = 30.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.latency = latency
        self.request_timeout = request_timeout
        self.max_frame_size = max_frame_size
        self.nodes: dict[str, MemoryTransport] = {}
        self._ports: dict[str, int] = {}
        self._wanted: set[Pair] = set()  # linked by the test (link/line/mesh)
        self._cut: set[Pair] = set()  # kept apart until linked again, whoever keeps them
        self._up: dict[Pair, tuple[End, End]] = {}
        self._conn_seq = itertools.count(1)

    # ---- building the network ------------------------------------------------------------------------

    def transport(self, node_id: str, *, capabilities: dict[str, Value] | None = None) -> MemoryTransport:
        """A new transport for ``node_id`` (its port is kept if the id was here before and vanished)."""
        old = self.nodes.get(node_id)
        if old is not None and not old.gone:
            raise ValueError(f"node {node_id} is already in this network")
        port = self._ports.setdefault(node_id, len(self._ports) + 1)
        t = MemoryTransport(self, node_id, port, capabilities)
        self.nodes[node_id] = t
        return t

    def link(self, a: str, b: str) -> None:
        """Join ``a`` and ``b`` (``a`` dials): up now if both run, else as soon as they do."""
        p = pair(a, b)
        self._cut.discard(p)
        self._wanted.add(p)
        self._reconcile(dialer=a)

    def line(self, *node_ids: str) -> None:
        """Link each node to the next: ``line("a", "b", "c")`` is ``a - b - c``."""
        for a, b in itertools.pairwise(node_ids):
            self.link(a, b)

    def mesh(self, *node_ids: str) -> None:
        """Link every pair of ``node_ids``."""
        for a, b in itertools.combinations(node_ids, 2):
            self.link(a, b)

    def cut(self, a: str, b: str, reason: str = "link cut") -> None:
        """Take the link between ``a`` and ``b`` down (both get a ``down`` event, in-flight frames are lost,
        waiting requests fail) and keep them apart, even if one keeps the other's address."""
        p = pair(a, b)
        self._wanted.discard(p)
        self._cut.add(p)
        self._drop(p, reason)

    def vanish(self, node_id: str) -> None:
        """``node_id`` disappears at once, as a killed process: its links drop (its peers get ``down``
        events, their requests waiting on it fail), frames in flight are lost, its transport stops."""
        t = self.nodes[node_id]
        t.gone = True
        for p in [p for p in self._up if node_id in p]:
            self._drop(p, f"node {node_id} vanished")
        t._stop()

    def linked(self, a: str, b: str) -> bool:
        """Whether a link between ``a`` and ``b`` is up."""
        return pair(a, b) in self._up

    def address(self, node_id: str) -> tuple[str, int]:
        """``(host, port)`` of ``node_id``, as a discovery module would report it."""
        return HOST, self._ports[node_id]

    # ---- internals -----------------------------------------------------------------------------------

    def _node_at(self, host: str, port: int) -> MemoryTransport | None:
        if host != HOST:
            return None
        return next((self.nodes[n] for n, p in self._ports.items() if p == port), None)

    def _keeps(self) -> set[tuple[str, str]]:
        """(keeper, kept) pairs of node ids wanted by :meth:`MemoryTransport.keep`."""
        out = set()
        for t in self.nodes.values():
            for port in t._keeps:
                target = self._node_at(HOST, port)
                if target is not None and target.node_id != t.node_id:
                    out.add((t.node_id, target.node_id))
        return out

    def _reconcile(self, dialer: str = "") -> None:
        """Bring up every wanted link whose two ends run (and that was not cut)."""
        wanted = [(p, dialer if dialer in p else min(p)) for p in self._wanted]
        wanted += [(pair(a, b), a) for a, b in self._keeps()]
        for p, first in wanted:
            if p in self._up or p in self._cut:
                continue
            ends = [self.nodes.get(n) for n in p]
            if all(t is not None and t.running for t in ends):
                self._connect(first, next(n for n in p if n != first))

    def _connect(self, a: str, b: str) -> End:
        """Link running nodes ``a`` (dialer) and ``b``; returns a's end."""
        p = pair(a, b)
        up = self._up.get(p)
        if up is not None:
            return up[0] if up[0].info.node_id == b else up[1]
        ta, tb = self.nodes[a], self.nodes[b]
        seq = next(self._conn_seq)
        ab, ba = Pipe(self.latency), Pipe(self.latency)
        drop = functools.partial(self._drop, p)
        end_a = End(tb._info(dialed=True, conn_seq=seq), outbound=ab, inbound=ba, drop=drop)
        end_b = End(ta._info(dialed=False, conn_seq=seq), outbound=ba, inbound=ab, drop=drop)
        self._up[p] = (end_a, end_b)
        ta._attach(end_a)
        tb._attach(end_b)
        return end_a

    def _drop(self, p: Pair, reason: str) -> None:
        ends = self._up.pop(p, None)
        if ends is None:
            return
        a, b = ends  # a's end names b, b's end names a
        self.nodes[b.info.node_id]._detach(a, reason)
        self.nodes[a.info.node_id]._detach(b, reason)

    def _stopped(self, t: MemoryTransport) -> None:
        for p in [p for p in self._up if t.node_id in p]:
            self._drop(p, f"node {t.node_id} stopped")

    def _forgotten(self, keeper: str, kept: str) -> None:
        p = pair(keeper, kept)
        if p not in self._wanted and (kept, keeper) not in self._keeps():
            self._drop(p, f"{kept} forgotten by {keeper}")


class MemoryTransport(Endpoint):
    """A node's transport on a :class:`MemoryNetwork` (build it with :meth:`MemoryNetwork.transport`)."""

    def __init__(
        self, network: MemoryNetwork, node_id: str, port: int, capabilities: dict[str, Value] | None
    ) -> None:
        super().__init__(
            node_id, request_timeout=network.request_timeout, max_frame_size=network.max_frame_size
        )
        self.network = network
        self.capabilities: dict[str, Value] = dict(capabilities or {})
        #: set by :meth:`MemoryNetwork.vanish`: this transport never links again
        self.gone = False
        self._port = port
        self._instance = secrets.randbits(63)
        self._keeps: set[int] = set()

    # ---- contract: running and addresses -------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started and not vanished: links to it can come up."""
        return self._tg is not None and not self.gone

    async def run(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Join the network until cancelled (or until :meth:`MemoryNetwork.vanish`)."""
        if self.gone:
            raise RuntimeError(f"node {self.node_id} vanished from its network; make a new transport")
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self.network._reconcile()
                log.info("memory transport %s up at %s", self.node_id, self.advertised_address)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self.network._stopped(self)
            self._tg = None

    def _stop(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    @property
    def port(self) -> int:
        if self._tg is None:
            raise RuntimeError("the transport is not running yet: start it with `await tg.start(t.run)`")
        return self._port

    @property
    def advertised_address(self) -> str:
        return f"{HOST}:{self._port}" if self._tg is not None else ""

    # ---- contract: connecting ------------------------------------------------------------------------

    async def dial(self, host: str, port: int, *, ssh: SshRoute | None = None) -> PeerInfo:
        _no_ssh(ssh)
        await anyio.lowlevel.checkpoint()
        if not self.running:
            raise RuntimeError("the transport is not running: start it with `await tg.start(transport.run)`")
        target = self.network._node_at(host, port)
        if target is None or not target.running:
            raise ConnectionRefusedError(f"nothing listens at {host}:{port} in this memory network")
        if target is self:
            raise HandshakeError(ErrorCode.SELF_CONNECTION, f"{host}:{port} is this node itself")
        if pair(self.node_id, target.node_id) in self.network._cut:
            raise TimeoutError(f"{host}:{port} is unreachable: the link to {target.node_id} is cut")
        return self.network._connect(self.node_id, target.node_id).info

    def keep(self, host: str, port: int, *, ssh: SshRoute | None = None) -> None:
        _no_ssh(ssh)
        if self._tg is None:
            raise RuntimeError("the transport is not running: start it with `await tg.start(transport.run)`")
        if self.network._node_at(host, port) is None:
            log.warning("keeping %s:%d: no such node in this memory network (yet)", host, port)
        if host == HOST and port != self._port:
            self._keeps.add(port)
            self.network._reconcile(dialer=self.node_id)

    def forget(self, host: str, port: int, *, ssh: SshRoute | None = None) -> None:
        if host != HOST or port not in self._keeps:
            return
        self._keeps.discard(port)
        target = self.network._node_at(host, port)
        if target is not None:
            self.network._forgotten(self.node_id, target.node_id)

    def peer_at(self, host: str, port: int, *, ssh: SshRoute | None = None) -> str | None:
        if ssh is not None or host != HOST or port not in self._keeps:
            return None
        target = self.network._node_at(host, port)
        return target.node_id if target is not None and target.node_id in self.peers else None

    # ---- links ---------------------------------------------------------------------------------------

    def _info(self, *, dialed: bool, conn_seq: int) -> PeerInfo:
        """This node as its peer sees it (what its HELLO would say)."""
        return PeerInfo(
            node_id=self.node_id,
            version=PROTOCOL_VERSION,
            capabilities=dict(self.capabilities),
            address=self.advertised_address,
            remote_address=self.advertised_address,
            agent=f"exo-core {__version__} (memory)",
            instance=self._instance,
            dialed=dialed,
            conn_seq=conn_seq,
        )

    def _attach(self, end: End) -> None:
        tg = self._group()
        self._ends[end.info.node_id] = end
        tg.start_soon(self._pump, end)
        log.info("peer %s up (memory link)", end.info.node_id)
        self._emit(PeerEvent("up", end.info))

    def _detach(self, end: End, reason: str) -> None:
        end.scope.cancel()
        if self._ends.get(end.info.node_id) is end:
            del self._ends[end.info.node_id]
        log.info("peer %s down: %s", end.info.node_id, reason)
        self._emit(PeerEvent("down", end.info, reason))

    def __repr__(self) -> str:
        return f"MemoryTransport(node_id={self.node_id!r}, port={self._port}, peers={len(self._ends)})"
