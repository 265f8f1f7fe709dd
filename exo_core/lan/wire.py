"""The discovery wire format shared by the ``udp`` and ``tcp`` discovery modules (and open to others).

Every discovery message is one frame::

    offset size  field
    0      4     magic b"EXOD"
    4      1     version (1)
    5      1     message type (see :class:`MessageType`)
    6      1     flags: bit 0 set = a 32-byte HMAC-SHA256 tag follows the body; other bits must be 0
    7      8     cluster id (all zeros when no cluster key is set)
    15     2     body length n, big-endian (bounded per transport)
    17     n     body: one UTF-8 JSON object (validated per message type)
    17+n   32    tag = HMAC-SHA256(auth key, bytes 0 .. 17+n), present iff flag bit 0

The cluster id and the auth key are both derived from the cluster key with HMAC-SHA256 (domain separated
from the transport's use of the same key), so the key itself never crosses the wire. A node only accepts
frames whose cluster id equals its own; with a key set it also requires a valid tag. The codec is pure
(no I/O); :class:`BadInputLog` only logs. Each discovery module defines its message bodies as pydantic
models with :data:`STRICT` (the first-party ones: ``exo_discovery_udp.messages`` and
``exo_discovery_tcp.messages``).
Normative description with a test vector: docs/discovery.md, "Message formats".
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exo_core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

MAGIC = b"EXOD"
VERSION = 1
HEADER = struct.Struct(">4sBBB8sH")
HEADER_SIZE = HEADER.size  # 17
TAG_SIZE = 32
FLAG_AUTH = 0x01
NO_CLUSTER = bytes(8)
#: Largest UDP body: header + body + tag stay under a 1500-byte Ethernet MTU (no IP fragmentation).
MAX_UDP_BODY = 1400
#: Largest TCP body (a hello carrying a gossip list).
MAX_TCP_BODY = 32 * 1024


class MessageType(enum.IntEnum):
    """Message types of discovery protocol version 1."""

    ANNOUNCE = 1  # UDP: "I am here"
    BYE = 2  # UDP: "I am leaving"
    HELLO = 3  # TCP: opener of the exchange
    HELLO_REPLY = 4  # TCP: answer to HELLO
    ACK = 5  # TCP: closes the exchange (proves the opener's freshness)


class WireError(ValueError):
    """A frame is malformed, foreign or fails authentication. The message says which."""


class ForeignClusterError(WireError):
    """A well-formed frame from another cluster (or from a node with / without a key when we differ)."""


@dataclass(frozen=True)
class ClusterAuth:
    """What a node derives from its cluster key (or the absence of one)."""

    cluster_id: bytes
    auth_key: bytes | None

    @classmethod
    def from_key(cls, key: str | None) -> ClusterAuth:
        """Derive the cluster id and auth key; ``None`` or ``""`` means no cluster key (open cluster)."""
        if not key:
            return cls(NO_CLUSTER, None)
        secret = key.encode("utf-8")
        cluster_id = hmac.new(secret, b"exo/discovery/cluster-id", hashlib.sha256).digest()[:8]
        auth_key = hmac.new(secret, b"exo/discovery/auth-key", hashlib.sha256).digest()
        return cls(cluster_id, auth_key)


@dataclass(frozen=True)
class DiscoveryFrame:
    """A decoded, verified discovery frame (not the transport's :class:`exo_core.protocol.header.Frame`)."""

    type: MessageType
    body: dict[str, Any]


def encode(auth: ClusterAuth, msg_type: MessageType, body: BaseModel, *, max_body: int) -> bytes:
    """Encode one frame. Raises :class:`WireError` when the body is larger than ``max_body``."""
    payload = body.model_dump_json(exclude_none=True).encode("utf-8")
    if len(payload) > max_body:
        raise WireError(f"{msg_type.name} body is {len(payload)} bytes, over the {max_body}-byte limit")
    flags = FLAG_AUTH if auth.auth_key is not None else 0
    head = HEADER.pack(MAGIC, VERSION, int(msg_type), flags, auth.cluster_id, len(payload))
    data = head + payload
    if auth.auth_key is not None:
        data += hmac.new(auth.auth_key, data, hashlib.sha256).digest()
    return data


@dataclass(frozen=True)
class Header:
    """A parsed header; ``frame_size`` is the full size including body and tag."""

    type: MessageType
    flags: int
    cluster_id: bytes
    body_size: int

    @property
    def frame_size(self) -> int:
        return HEADER_SIZE + self.body_size + (TAG_SIZE if self.flags & FLAG_AUTH else 0)


def parse_header(data: bytes, auth: ClusterAuth, *, max_body: int) -> Header:
    """Parse and check the first :data:`HEADER_SIZE` bytes of a frame (before reading the rest)."""
    if len(data) < HEADER_SIZE:
        raise WireError(f"frame of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, raw_type, flags, cluster_id, size = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r} (not an exo discovery frame)")
    if version != VERSION:
        raise WireError(f"unsupported discovery protocol version {version} (this node speaks {VERSION})")
    try:
        msg_type = MessageType(raw_type)
    except ValueError:
        raise WireError(f"unknown message type {raw_type}") from None
    if flags & ~FLAG_AUTH:
        raise WireError(f"unknown flag bits 0x{flags:02x}")
    if size > max_body:
        raise WireError(f"body length {size} is over the {max_body}-byte limit")
    if cluster_id != auth.cluster_id:
        raise ForeignClusterError("frame from another cluster (cluster id differs; check --cluster-key)")
    if bool(flags & FLAG_AUTH) != (auth.auth_key is not None):
        raise ForeignClusterError(
            "frame is authenticated but this node has no cluster key"
            if flags & FLAG_AUTH
            else "frame is not authenticated but this node requires the cluster key"
        )
    return Header(msg_type, flags, cluster_id, size)


def decode(data: bytes, auth: ClusterAuth, *, max_body: int) -> DiscoveryFrame:
    """Decode and verify one complete frame. Raises :class:`WireError` saying what is wrong."""
    header = parse_header(data, auth, max_body=max_body)
    if len(data) != header.frame_size:
        raise WireError(f"frame is {len(data)} bytes, its header says {header.frame_size}")
    end = HEADER_SIZE + header.body_size
    if auth.auth_key is not None:
        expected = hmac.new(auth.auth_key, data[:end], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, data[end:]):
            raise WireError("bad authentication tag (wrong cluster key, or a tampered frame)")
    try:
        body = json.loads(data[HEADER_SIZE:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError(f"body is a JSON {type(body).__name__}, expected an object")
    return DiscoveryFrame(header.type, body)


def validate(model: type[M], frame: DiscoveryFrame) -> M:
    """Validate a frame's body against a message model; raises :class:`WireError` naming the field."""
    try:
        return model.model_validate(frame.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise WireError(f"{frame.type.name}: {where}: {first['msg']}") from None


#: Message models: unknown fields are ignored (forward compatible), types are never coerced.
STRICT = ConfigDict(extra="ignore", frozen=True, strict=True)


class Flops(BaseModel):
    """Peak TFLOPS of a device."""

    model_config = STRICT
    fp32: float = Field(ge=0, allow_inf_nan=False)
    fp16: float = Field(ge=0, allow_inf_nan=False)
    int8: float = Field(ge=0, allow_inf_nan=False)


class Capabilities(BaseModel):
    """A device's capabilities, as the peers.json ``device_capabilities`` mapping."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    model: str = Field(max_length=128)
    chip: str = Field(max_length=128)
    memory: int | float = Field(ge=0, allow_inf_nan=False)  # MB
    flops: Flops

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> Capabilities | None:
        """Validate this node's own capabilities; raises :class:`ConfigError` (e.g. a bad
        ``EXO_DEVICE_*`` override) naming the field."""
        if value is None:
            return None
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"this device's capabilities are invalid: {where}: {first['msg']}") from None


class BadInputLog:
    """Logs bad input at WARNING, at most once per source and kind of problem per ``interval`` seconds.

    A flood of bad datagrams (a misconfigured node, another program on the port) must not flood the log;
    the first occurrence is always logged and repeats are counted in the next line.
    """

    def __init__(self, logger: logging.Logger, *, interval: float = 60.0, max_keys: int = 1024) -> None:
        self._log = logger
        self._interval = interval
        self._max_keys = max_keys
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, source: str, reason: str, detail: str, *, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        key = (source, reason + ":" + re.sub(r"\d+", "N", detail)[:80])
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        if len(self._seen) >= self._max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        more = f" ({suppressed} similar suppressed)" if suppressed else ""
        self._log.log(level, "ignored discovery message from %s: %s%s", source, detail, more)
