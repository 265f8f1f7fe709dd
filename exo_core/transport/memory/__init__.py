"""An in-process transport: nodes of one :class:`MemoryNetwork` talk through queues instead of sockets.

It honours the :class:`~exo_core.transport.contract.Transport` contract, so real nodes (``Node``, its router,
gossip, backend and stage runner) run in one process and one event loop, in tests::

    net = MemoryNetwork()
    a, b, c = (net.transport(n, capabilities={"memory": 1024}) for n in "abc")
    net.line("a", "b", "c")                  # a - b - c: a and c reach each other only through b
    async with anyio.create_task_group() as tg:
        for t in (a, b, c):
            await tg.start(t.run)            # links come up as soon as both ends run
        await a.send("b", Finish("r1", "stop"))
        net.cut("a", "b")                    # both sides get a `down` PeerEvent; waiting requests fail
        net.vanish("c")                      # c is gone: every link of c drops, c's transport stops

What it shares with TCP, so bugs show the same way: every message is encoded to a frame by the real codec
(:mod:`exo_core.protocol.codec`) and parsed back by the real :class:`~exo_core.protocol.frame.FrameParser`
(frame size limit included), so a receiver never shares memory with the sender; one FIFO per direction of
each link; handlers and the relay handler run in pooled tasks started in arrival order; requests, replies,
``ERROR`` replies, ``PING``, TTLs and relaying behave as in :class:`~exo_core.transport.tcp.TcpTransport`,
and the same errors are raised (:class:`PeerUnavailableError` for a peer that is not connected, and for
requests waiting on a link that drops; :class:`RequestTimeoutError`; :class:`RemoteError`).

Modules: :mod:`~exo_core.transport.memory.network` (the network and the transports on it),
:mod:`~exo_core.transport.memory.endpoint` (sending, receiving, request matching, relaying) and
:mod:`~exo_core.transport.memory.links` (the pipes).

What it leaves out: handshakes and authentication (a link is up at once), fragmentation, backpressure and
keepalives. Addresses are ``memory:PORT`` (:data:`HOST`), one port per node id, so discovery sinks work:
:meth:`MemoryTransport.keep` links to the node with that port now and again whenever both ends run (a
restarted node, a restored link), without a backoff; a pair that was :meth:`MemoryNetwork.cut` stays
apart until :meth:`MemoryNetwork.link` joins it again.
"""

from __future__ import annotations

from exo_core.transport.memory.links import HOST
from exo_core.transport.memory.network import MemoryNetwork, MemoryTransport

__all__ = ["HOST", "MemoryNetwork", "MemoryTransport"]
