"""The discovery frame format: round trips, authentication, foreign clusters and malformed input."""

from __future__ import annotations

import json
import struct

import pytest
from exo_discovery_udp.messages import Announce
from pydantic import BaseModel

from exo_core.errors import ConfigError
from exo_core.lan import wire

OPEN = wire.ClusterAuth.from_key(None)
K1 = wire.ClusterAuth.from_key("key one")
K2 = wire.ClusterAuth.from_key("key two")
INST = "0123456789abcdef"
ANN = Announce(id="node-1", port=50051, inst="0123456789abcdef", seq=7, cap=None)


def test_open_frame_layout_is_as_documented() -> None:
    data = wire.encode(OPEN, wire.MessageType.ANNOUNCE, ANN, max_body=wire.MAX_UDP_BODY)
    body = b'{"id":"node-1","port":50051,"inst":"0123456789abcdef","seq":7}'
    assert data == b"EXOD" + bytes([1, 1, 0]) + bytes(8) + struct.pack(">H", len(body)) + body
    assert data[:17].hex(" ") == "45 58 4f 44 01 01 00 00 00 00 00 00 00 00 00 00 3e"  # docs/discovery.md
    frame = wire.decode(data, OPEN, max_body=wire.MAX_UDP_BODY)
    assert frame.type is wire.MessageType.ANNOUNCE and wire.validate(Announce, frame) == ANN


def test_keyed_frame_carries_cluster_id_and_tag() -> None:
    data = wire.encode(K1, wire.MessageType.ANNOUNCE, ANN, max_body=wire.MAX_UDP_BODY)
    assert data[6] == wire.FLAG_AUTH and data[7:15] == K1.cluster_id != bytes(8)
    assert len(data) == wire.HEADER_SIZE + struct.unpack(">H", data[15:17])[0] + wire.TAG_SIZE
    assert b"key one" not in data
    assert wire.validate(Announce, wire.decode(data, K1, max_body=wire.MAX_UDP_BODY)) == ANN


@pytest.mark.parametrize(
    ("sender", "receiver", "message"),
    [
        (K2, K1, "another cluster"),
        (OPEN, K1, "another cluster"),
        (K1, OPEN, "another cluster"),
    ],
)
def test_foreign_frames_are_refused(
    sender: wire.ClusterAuth, receiver: wire.ClusterAuth, message: str
) -> None:
    data = wire.encode(sender, wire.MessageType.ANNOUNCE, ANN, max_body=wire.MAX_UDP_BODY)
    with pytest.raises(wire.ForeignClusterError, match=message):
        wire.decode(data, receiver, max_body=wire.MAX_UDP_BODY)


def test_same_cluster_id_with_a_forged_tag_is_refused() -> None:
    forged = wire.ClusterAuth(K1.cluster_id, b"x" * 32)  # knows the public id, not the key
    data = wire.encode(forged, wire.MessageType.ANNOUNCE, ANN, max_body=wire.MAX_UDP_BODY)
    with pytest.raises(wire.WireError, match="bad authentication tag"):
        wire.decode(data, K1, max_body=wire.MAX_UDP_BODY)


def _frame(body: bytes, *, magic: bytes = b"EXOD", version: int = 1, kind: int = 1, flags: int = 0) -> bytes:
    return magic + bytes([version, kind, flags]) + bytes(8) + struct.pack(">H", len(body)) + body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"EXOD", "shorter than the 17-byte header"),
        (_frame(b"{}", magic=b"HTTP"), "bad magic"),
        (_frame(b"{}", version=2), "unsupported discovery protocol version 2"),
        (_frame(b"{}", kind=99), "unknown message type 99"),
        (_frame(b"{}", flags=0x80), "unknown flag bits 0x80"),
        (_frame(b"{}")[:-1], "its header says 19"),
        (_frame(b"{}") + b"x", "its header says 19"),
        (_frame(b"x" * 2000), "body length 2000 is over the 1400-byte limit"),
        (_frame(b"\xff\xfe"), "not UTF-8 JSON"),
        (_frame(b"{nope"), "not UTF-8 JSON"),
        (_frame(b"[1, 2]"), "body is a JSON list, expected an object"),
        (_frame(b"[" * 15000 + b"]" * 15000), "not UTF-8 JSON"),  # nesting deeper than the recursion limit
    ],
)
def test_malformed_frames_raise_wire_errors(data: bytes, message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.decode(data, OPEN, max_body=wire.MAX_UDP_BODY if len(data) < 4000 else wire.MAX_TCP_BODY)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"port": 1, "inst": "0123456789abcdef", "seq": 1}, "ANNOUNCE: id: Field required"),
        (
            {"id": "a", "port": "1", "inst": "0123456789abcdef", "seq": 1},
            "port: Input should be a valid integer",
        ),
        ({"id": "a", "port": 0, "inst": "0123456789abcdef", "seq": 1}, "port: Input should be greater"),
        ({"id": "a", "port": 1, "inst": "XYZ", "seq": 1}, "inst: String should have at least 8"),
        (
            {"id": "a" * 200, "port": 1, "inst": "0123456789abcdef", "seq": 1},
            "id: String should have at most",
        ),
        ({"id": "a", "port": 1, "inst": "0123456789abcdef", "seq": 1, "cap": {"model": "m"}}, "cap.chip"),
    ],
)
def test_invalid_bodies_name_the_field(body: dict[str, object], message: str) -> None:
    frame = wire.decode(_frame(json.dumps(body).encode()), OPEN, max_body=wire.MAX_UDP_BODY)
    with pytest.raises(wire.WireError, match=message):
        wire.validate(Announce, frame)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    body = {"id": "a", "port": 1, "inst": "0123456789abcdef", "seq": 1, "future": [1, 2]}
    frame = wire.decode(_frame(json.dumps(body).encode()), OPEN, max_body=wire.MAX_UDP_BODY)
    assert wire.validate(Announce, frame).id == "a"


def test_oversized_bodies_are_refused_at_encode() -> None:
    class Big(BaseModel):
        blob: str

    with pytest.raises(wire.WireError, match="over the 1400-byte limit"):
        wire.encode(OPEN, wire.MessageType.ANNOUNCE, Big(blob="x" * 1400), max_body=wire.MAX_UDP_BODY)


def test_capabilities_round_trip_in_the_seed_format() -> None:
    caps = {
        "model": "MacBook Pro",
        "chip": "Apple M2",
        "memory": 16384,
        "flops": {"fp32": 3.6, "fp16": 7.2, "int8": 14.4},
    }
    assert wire.Capabilities.model_validate(caps).model_dump() == caps


def test_invalid_own_capabilities_are_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"this device's capabilities are invalid: flops\.fp16: Field required"
    ):
        wire.Capabilities.from_dict({"model": "m", "chip": "c", "memory": 1, "flops": {"fp32": 1, "int8": 1}})
