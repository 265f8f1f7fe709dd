"""The hex vectors in docs/protocol.md, byte for byte, both ways."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exo_core.protocol import FrameParser, decode, encode_bytes

from .vectors import VECTORS, extra_vectors

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def doc_vectors() -> dict[str, bytes]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- vector: (\w+) -->\n```hex\n(.*?)```", text, flags=re.S)
    return {name: bytes.fromhex("".join(body.split())) for name, body in blocks}


def test_doc_and_code_name_the_same_vectors() -> None:
    assert set(doc_vectors()) == set(VECTORS) | set(extra_vectors())


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector(name: str) -> None:
    msg, env = VECTORS[name]
    data = doc_vectors()[name]
    assert encode_bytes(msg, env) == data
    (frame,) = FrameParser().feed(data)
    assert frame.type == msg.TYPE
    assert decode(frame.type, frame.payload) == (env, msg)


def test_fragment_and_mac_vectors() -> None:
    doc = doc_vectors()
    for name, blob in extra_vectors().items():
        assert doc[name] == blob, name
    (frame,) = FrameParser().feed(doc["fragmented_ping"])
    msg, env = VECTORS["ping"]
    assert decode(frame.type, frame.payload) == (env, msg)
