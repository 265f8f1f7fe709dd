"""How nodes talk to each other: the :class:`Transport` contract and its implementations.

The node depends on :class:`Transport` only; ``--transport NAME`` picks the implementation from the
registry (built-in: ``tcp``, :mod:`exo_core.transport.tcp`). :mod:`exo_core.transport.memory` implements
the same contract in-process, for tests.
"""

from __future__ import annotations

from exo_core.transport.contract import Transport
from exo_core.transport.errors import (
    ConnectionClosedError,
    HandshakeError,
    PeerUnavailableError,
    RemoteError,
    RequestTimeoutError,
    TransportError,
)
from exo_core.transport.types import Handler, Incoming, PeerEvent, PeerInfo, PeerListener, RelayHandler

__all__ = [
    "ConnectionClosedError",
    "Handler",
    "HandshakeError",
    "Incoming",
    "PeerEvent",
    "PeerInfo",
    "PeerListener",
    "PeerUnavailableError",
    "RelayHandler",
    "RemoteError",
    "RequestTimeoutError",
    "Transport",
    "TransportError",
]
