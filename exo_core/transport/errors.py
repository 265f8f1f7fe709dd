"""Errors the transport raises to its callers."""

from __future__ import annotations

from exo_core.errors import ExoError
from exo_core.protocol.errors import ErrorCode


class TransportError(ExoError):
    """Base class of transport errors."""


class ConnectionClosedError(TransportError):
    """The connection closed before the operation finished."""


class PeerUnavailableError(TransportError):
    """No connection to the peer (never connected, or lost): fail fast instead of waiting."""


class RequestTimeoutError(TransportError, TimeoutError):
    """No reply within the request's timeout."""


class RemoteError(TransportError):
    """The peer answered with an ``ERROR`` message."""

    def __init__(self, code: int, message: str, peer: str) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"peer {peer} replied {name}: {message}")
        self.code = code
        self.remote_message = message
        self.peer = peer


class HandshakeError(TransportError):
    """The handshake failed; ``code`` says why (VERSION_MISMATCH, AUTH_FAILED, BAD_MAGIC, TIMEOUT, ...).

    ``from_peer`` is true when the peer rejected us (it sent ``ERROR``), false when we rejected the peer.
    """

    def __init__(self, code: ErrorCode, message: str, *, from_peer: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.from_peer = from_peer
