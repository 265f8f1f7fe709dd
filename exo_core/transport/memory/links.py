"""The links of a memory network: one FIFO pipe per direction, and each side's view of a link."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio import CancelScope

from exo_core.transport.types import PeerInfo

#: The host part of every memory transport's address (``memory:PORT``).
HOST = "memory"

Pair = frozenset[str]


def pair(a: str, b: str) -> Pair:
    """The unordered pair of node ids ``a`` and ``b`` (a link's key)."""
    if a == b:
        raise ValueError(f"a node cannot be linked to itself ({a})")
    return frozenset((a, b))


class Pipe:
    """One direction of a link: frames in send order, each delivered ``latency`` seconds after it was put."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self._frames: deque[tuple[float, bytes]] = deque()
        self._ready = anyio.Event()

    def put(self, data: bytes) -> None:
        """Queue one encoded frame (never blocks: a memory link has no backpressure)."""
        self._frames.append((anyio.current_time() + self.latency, data))
        self._ready.set()

    async def get(self) -> bytes:
        """The next frame, once it is due."""
        while not self._frames:
            await self._ready.wait()
            self._ready = anyio.Event()
        due, data = self._frames.popleft()
        if (delay := due - anyio.current_time()) > 0:
            await anyio.sleep(delay)
        return data


@dataclass(eq=False)
class End:
    """One side of a link.

    Attributes:
        info: the peer, as this side sees it (what its HELLO would say).
        outbound / inbound: the two directions, from this side.
        drop: takes the whole link down, both sides, giving the reason (set by the network).
        scope: this side's reading task (cancelled when the link drops).
    """

    info: PeerInfo
    outbound: Pipe
    inbound: Pipe
    drop: Callable[[str], None]
    scope: CancelScope = field(default_factory=CancelScope)
