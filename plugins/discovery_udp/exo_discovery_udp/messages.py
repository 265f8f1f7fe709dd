"""Bodies of the UDP discovery messages (JSON objects inside a :mod:`exo_core.lan.wire` frame)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from exo_core.lan.wire import STRICT, Capabilities


class Announce(BaseModel):
    """ANNOUNCE: a node says it is alive.

    Attributes:
        id: the sender's node id.
        port: the sender's node (transport) port; the host is the datagram's source address.
        inst: a random id of this run of the sender (changes on restart).
        seq: counts up with every message of one ``inst``; older or repeated numbers are replays.
        cap: the sender's device capabilities (peers.json ``device_capabilities`` format).
    """

    model_config = STRICT
    id: str = Field(min_length=1, max_length=128)
    port: int = Field(ge=1, le=65535)
    inst: str = Field(min_length=8, max_length=32, pattern=r"^[0-9a-f]+$")
    seq: int = Field(ge=0, lt=2**63)
    cap: Capabilities | None = None


class Bye(BaseModel):
    """BYE: a node says it is leaving (sent once on a clean shutdown)."""

    model_config = STRICT
    id: str = Field(min_length=1, max_length=128)
    inst: str = Field(min_length=8, max_length=32, pattern=r"^[0-9a-f]+$")
    seq: int = Field(ge=0, lt=2**63)
