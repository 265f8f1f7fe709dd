"""The protocol's error type and the error codes carried by ``ERROR`` messages."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Error codes of ``ERROR`` messages (``u16`` on the wire); see docs/protocol.md §Errors."""

    BAD_MAGIC = 1
    UNKNOWN_TYPE = 2
    FRAME_TOO_LARGE = 3
    MALFORMED = 4
    TRUNCATED = 5
    TIMEOUT = 6
    VERSION_MISMATCH = 7
    AUTH_REQUIRED = 8
    AUTH_FAILED = 9
    UNEXPECTED = 10
    NO_HANDLER = 11
    NO_ROUTE = 12
    TTL_EXPIRED = 13
    INTERNAL = 14
    UNAVAILABLE = 15
    CANCELLED = 16
    SELF_CONNECTION = 17


class ProtocolError(Exception):
    """Bytes that do not follow the exo wire protocol.

    The only exception the decoders raise on bad input. ``code`` says which rule was broken and is what
    an ``ERROR`` reply carries.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"
