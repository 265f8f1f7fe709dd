"""Bodies of the TCP discovery messages (JSON objects inside a :mod:`exo_core.lan.wire` frame).

One exchange is three frames on a fresh connection: the dialer sends HELLO, the listener answers
HELLO_REPLY (echoing the dialer's nonce), the dialer closes with ACK (echoing the listener's nonce).
With a cluster key every frame carries an HMAC tag, so the echoed nonces prove both sides know the key
*now* (a recorded exchange cannot be replayed to keep a departed node alive).
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, Field, field_validator

from exo_core.lan.wire import STRICT, Capabilities

#: Most peers one HELLO or HELLO_REPLY lists (gossip); the most recently seen are sent.
MAX_GOSSIP = 64

NONCE_PATTERN = r"^[0-9a-f]{32}$"


class PeerRef(BaseModel):
    """A peer the sender knows (gossip): where to reach its node and its discovery listener."""

    model_config = STRICT
    id: str = Field(min_length=1, max_length=128)
    host: str = Field(max_length=64)
    port: int = Field(ge=1, le=65535)
    dport: int = Field(ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))  # gossip carries IP literals only, never names


class Hello(BaseModel):
    """HELLO: who the dialer is.

    Attributes:
        id: node id. port: node (transport) port. dport: discovery port it listens on.
        cap: device capabilities. nonce: 16 random bytes, hex. peers: live peers it knows.
    """

    model_config = STRICT
    id: str = Field(min_length=1, max_length=128)
    port: int = Field(ge=1, le=65535)
    dport: int = Field(ge=1, le=65535)
    nonce: str = Field(pattern=NONCE_PATTERN)
    cap: Capabilities | None = None
    peers: list[PeerRef] = Field(default_factory=list, max_length=MAX_GOSSIP)


class HelloReply(Hello):
    """HELLO_REPLY: who the listener is, plus ``echo``, the dialer's nonce."""

    echo: str = Field(pattern=NONCE_PATTERN)


class Ack(BaseModel):
    """ACK: the dialer echoes the listener's nonce, completing the exchange."""

    model_config = STRICT
    id: str = Field(min_length=1, max_length=128)
    echo: str = Field(pattern=NONCE_PATTERN)
