"""The exo wire protocol: frames, messages and their binary encoding (pure: no I/O).

Normative description: docs/protocol.md. Entry points: :func:`encode` / :func:`decode` for messages,
:class:`FrameParser` for turning received bytes into frames, :func:`fragments` for cutting large messages.
"""

from __future__ import annotations

from exo_core.protocol.auth import auth_mac, new_nonce, verify_mac
from exo_core.protocol.binary import Value
from exo_core.protocol.codec import (
    CONNECTION_TYPES,
    MESSAGE_CLASSES,
    ConnectionMessage,
    Encoded,
    Message,
    RoutedMessage,
    decode,
    encode,
    encode_bytes,
)
from exo_core.protocol.control import (
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthResponse,
    Error,
    GoAway,
    Hello,
    Ping,
    Pong,
    Ready,
)
from exo_core.protocol.envelope import DEFAULT_TTL, Envelope, decrement_ttl
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.fragment import Fragmenter, fragments
from exo_core.protocol.frame import DEFAULT_MAX_FRAME_SIZE, FrameParser
from exo_core.protocol.header import HEADER_SIZE, MAGIC, Frame, FrameType, encode_frame, frame_header
from exo_core.protocol.inference import (
    Finish,
    NodeState,
    Progress,
    Prompt,
    RequestContext,
    Stage,
    TensorMessage,
    Token,
    Topology,
)
from exo_core.protocol.sampling import Sampling
from exo_core.protocol.tensor import Tensor

__all__ = [
    "CONNECTION_TYPES",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_TTL",
    "HEADER_SIZE",
    "MAGIC",
    "MESSAGE_CLASSES",
    "PROTOCOL_VERSION",
    "AuthChallenge",
    "AuthResponse",
    "ConnectionMessage",
    "Encoded",
    "Envelope",
    "Error",
    "ErrorCode",
    "Finish",
    "Fragmenter",
    "Frame",
    "FrameParser",
    "FrameType",
    "GoAway",
    "Hello",
    "Message",
    "NodeState",
    "Ping",
    "Pong",
    "Progress",
    "Prompt",
    "ProtocolError",
    "Ready",
    "RequestContext",
    "RoutedMessage",
    "Sampling",
    "Stage",
    "Tensor",
    "TensorMessage",
    "Token",
    "Topology",
    "Value",
    "auth_mac",
    "decode",
    "decrement_ttl",
    "encode",
    "encode_bytes",
    "encode_frame",
    "fragments",
    "frame_header",
    "new_nonce",
    "verify_mac",
]
