"""Mutual HMAC-SHA256 challenge-response over nonces from both sides (the key never crosses the wire).

Each side sends ``AUTH_CHALLENGE(nonce)``; each answers the other's challenge with
``AUTH_RESPONSE(HMAC-SHA256(key, "exo-auth-v1" | challenger nonce | responder nonce |
SHA-256(responder HELLO payload) | SHA-256(challenger HELLO payload)))``. Both nonces are fresh per
connection, and the order of the fields differs with the direction, so a response can be neither replayed
nor reflected back; the HELLO digests bind the node ids and versions each side claimed to the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from exo_core.protocol.control import NONCE_SIZE

AUTH_LABEL: Final = b"exo-auth-v1"


def new_nonce() -> bytes:
    """A fresh random nonce for AUTH_CHALLENGE."""
    return secrets.token_bytes(NONCE_SIZE)


def auth_mac(
    key: bytes,
    challenger_nonce: bytes,
    responder_nonce: bytes,
    responder_hello: bytes,
    challenger_hello: bytes,
) -> bytes:
    """The MAC the responder sends in AUTH_RESPONSE (HELLO arguments are the HELLO frames' payloads)."""
    msg = (
        AUTH_LABEL
        + challenger_nonce
        + responder_nonce
        + hashlib.sha256(responder_hello).digest()
        + hashlib.sha256(challenger_hello).digest()
    )
    return hmac.new(key, msg, hashlib.sha256).digest()


def verify_mac(expected: bytes, got: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(expected, got)
