"""The messages behind the hex test vectors in docs/protocol.md (checked byte for byte by test_vectors.py).

``python -m tests.protocol.vectors`` prints the vector blocks for the doc.
"""

from __future__ import annotations

from exo_core.protocol import (
    AuthChallenge,
    AuthResponse,
    Envelope,
    Error,
    ErrorCode,
    Finish,
    GoAway,
    Hello,
    Message,
    NodeState,
    Ping,
    Pong,
    Progress,
    Prompt,
    Ready,
    RequestContext,
    Stage,
    Tensor,
    TensorMessage,
    Token,
    Topology,
)

from .wire_sampling import wire_sampling

CTX = RequestContext(
    "r1",
    "api",
    "smollm2-135m",
    (Stage("n1", 0, 14), Stage("n2", 15, 29)),
    wire_sampling(
        temperature=0.5, top_p=0.75, top_k=40, seed=42, max_tokens=128, top_logprobs=1, stop_token_ids=(2,)
    ),
)
REQ = Envelope("api", "n1", corr=7, wants_reply=True)
#: the context with OpenAI's penalties and a logit bias (sampling flags 0x02 and 0x04)
CTX_PENALTIES = RequestContext(
    "r2",
    "api",
    "smollm2-135m",
    (Stage("n1", 0, 29),),
    wire_sampling(
        temperature=0.0,
        max_tokens=16,
        stop_token_ids=(2,),
        presence_penalty=0.5,
        frequency_penalty=1.25,
        logit_bias=((9690, -100.0), (17, 2.5)),
    ),
)
#: the replay of a request after a failover: the prompt ends with the 2 tokens generated before it (flag 0x08)
CTX_RESUMED = RequestContext(
    "r3.1",
    "api",
    "smollm2-135m",
    (Stage("n1", 0, 29),),
    wire_sampling(temperature=0.5, seed=42, max_tokens=14, stop_token_ids=(2,), resumed=(17, 42)),
)
#: a request that asks for the sampled token's logprob and no alternatives (flag 0x10)
CTX_LOGPROBS = RequestContext(
    "r4",
    "api",
    "smollm2-135m",
    (Stage("n1", 0, 29),),
    wire_sampling(temperature=0.0, max_tokens=4, stop_token_ids=(2,), logprobs=True),
)

VECTORS: dict[str, tuple[Message, Envelope | None]] = {
    "hello": (
        Hello(
            "n1",
            instance=0x0102030405060708,
            conn_seq=3,
            dialer=True,
            auth=True,
            address="10.0.0.2:50051",
            agent="exo-core 0.1.0",
            capabilities={"memory": 16384, "chip": "M2"},
        ),
        None,
    ),
    "hello_anonymous": (Hello("", dialer=True, auth=True), None),
    "auth_challenge": (AuthChallenge(bytes(range(32))), None),
    "auth_response": (AuthResponse(bytes(range(32, 64))), None),
    "ready": (Ready(), None),
    "goaway": (GoAway("duplicate connection"), None),
    "ping": (Ping(1), Envelope("a", "b", corr=1, wants_reply=True)),
    "pong": (Pong(1), Envelope("b", "a", corr=1, reply=True)),
    "error": (Error(ErrorCode.AUTH_FAILED, "bad key", "r1"), Envelope("b", "a", corr=5, reply=True)),
    "prompt": (Prompt(CTX, (1, 9690, 2), position=0), REQ),
    "prompt_penalties": (Prompt(CTX_PENALTIES, (1, 9690), position=0), REQ),
    "prompt_resumed": (Prompt(CTX_RESUMED, (1, 9690, 17, 42), position=0), REQ),
    "prompt_logprobs": (Prompt(CTX_LOGPROBS, (1, 9690), position=0), REQ),
    "tensor": (
        TensorMessage(CTX, 3, 17, Tensor("float32", (1, 2), bytes.fromhex("0000803f00000040"), "<")),
        Envelope("n1", "n2", ttl=8),
    ),
    "token": (Token(CTX, 3, 18, 9690, -0.25, ((9690, -0.25),), True, "stop"), Envelope("n2", "api")),
    "finish": (Finish("r1", "stop"), Envelope("api", "n1")),
    "progress": (Progress("r1", 512, 4531), Envelope("n1", "api")),
    "topology": (
        Topology((NodeState("n1", 4, "10.0.0.2:50051", {"memory": 16384}, ("n2",)),)),
        Envelope("n1", ""),
    ),
    # a node leaving the cluster (SIGTERM) says so in its own record: capability "draining" = true
    "topology_leaving": (
        Topology((NodeState("n2", 5, "10.0.0.3:50051", {"memory": 8192, "draining": True}, ("n1",)),)),
        Envelope("n2", ""),
    ),
}

#: The "ping" vector's payload cut into FRAGMENT frames of at most 16 data bytes, stream id 1.
FRAGMENTED = ("ping", 1, 16)
#: Inputs of the "auth_mac" vector: key, challenger nonce, responder nonce, responder HELLO payload (the
#: "hello_anonymous" vector's: the dialer's first HELLO), challenger HELLO payload (the acceptor's anonymous
#: HELLO, no flag but auth).
AUTH_KEY = b"cluster-key"
CHALLENGER_HELLO = Hello("", auth=True)


def extra_vectors() -> dict[str, bytes]:
    """The vectors that are not a single message: a fragmented message and an authentication MAC."""
    from exo_core.protocol import HEADER_SIZE, auth_mac, encode, encode_bytes, fragments

    name, stream, size = FRAGMENTED
    msg, env = VECTORS[name]
    enc = encode(msg, env)
    frags = b"".join(
        b"".join(bytes(p) for p in parts) for parts in fragments(enc.type, enc.payload_parts(), stream, size)
    )
    responder = encode_bytes(*VECTORS["hello_anonymous"])[HEADER_SIZE:]
    challenger = encode_bytes(CHALLENGER_HELLO)[HEADER_SIZE:]
    mac = auth_mac(AUTH_KEY, bytes(range(32)), bytes(range(32, 64)), responder, challenger)
    return {"fragmented_ping": frags, "auth_mac": mac}


def render() -> str:
    """The doc blocks, for pasting into docs/protocol.md."""
    from exo_core.protocol import encode_bytes

    out = []
    blobs = {name: encode_bytes(msg, env) for name, (msg, env) in VECTORS.items()} | extra_vectors()
    for name, blob in blobs.items():
        data = blob.hex()
        lines = [data[i : i + 64] for i in range(0, len(data), 64)]
        out.append(f"<!-- vector: {name} -->\n```hex\n" + "\n".join(lines) + "\n```\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())  # noqa: T201
