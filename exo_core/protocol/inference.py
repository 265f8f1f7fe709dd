"""Inference messages: PROMPT, TENSOR, TOKEN, FINISH, TOPOLOGY, PROGRESS, and the request context they share.

The plan (which node runs which layers) travels inside every message of a request, so nodes never
disagree about who runs what (DESIGN.md §3).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from exo_core.protocol.binary import Reader, Value, Writer
from exo_core.protocol.errors import ErrorCode, ProtocolError
from exo_core.protocol.header import FrameType
from exo_core.protocol.sampling import Sampling
from exo_core.protocol.sampling import skip as skip_sampling
from exo_core.protocol.tensor import Tensor, read_tensor, write_tensor_header

MAX_PLAN: Final = 255
TOKEN_FINISHED: Final = 0x01
# Fixed-size runs of fields, each read and written with one struct call (the hot path of every message).
_STAGE: Final = struct.Struct(">HH")  # first_layer, last_layer
_STEP_POS: Final = struct.Struct(">II")  # step, position


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a plan: ``node_id`` runs layers ``first_layer..last_layer`` (inclusive)."""

    node_id: str
    first_layer: int
    last_layer: int


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What every message of one inference request carries.

    Attributes:
        request_id: the request's id (unique in the cluster, e.g. a UUID).
        origin: node id of the API node that owns the request (tokens go back there).
        model_id: the model being served.
        plan: ordered stages; the ring runs them in order.
        sampling: how the last stage samples (the request's parameters and what this plan run adds).
    """

    request_id: str
    origin: str
    model_id: str
    plan: tuple[Stage, ...]
    sampling: Sampling = field(default_factory=Sampling)

    def write(self, w: Writer) -> None:
        try:
            data = _CTX_ENCODED.get(self)
        except TypeError:  # a field holds something unhashable (a list plan): encode it every time
            self._write(w)
            return
        if data is None:
            sub = Writer()
            self._write(sub)
            data = _remember(_CTX_ENCODED, self, sub.getvalue())
        w.raw(data)

    def _write(self, w: Writer) -> None:
        w.str8(self.request_id)
        w.str8(self.origin)
        w.str8(self.model_id)
        if len(self.plan) > MAX_PLAN:
            raise ValueError(f"plan has {len(self.plan)} stages, at most {MAX_PLAN}")
        w.u8(len(self.plan))
        for s in self.plan:
            w.str8(s.node_id)
            w.pack(_STAGE, s.first_layer, s.last_layer)
        self.sampling.write(w)

    @classmethod
    def read(cls, r: Reader) -> RequestContext:
        # Every message of a request carries the same context: bytes seen before decode to the (immutable)
        # context they decoded to last time, found by skipping over the fields without building them.
        mv, start = r.view, r.pos
        stop = _ctx_end(mv, start)
        if stop < 0:
            return cls._read(r)
        key = bytes(mv[start:stop])
        ctx = _CTX_DECODED.get(key)
        if ctx is None:
            ctx = cls._read(r)
            if r.pos == stop:
                _remember(_CTX_DECODED, key, ctx)
        r.pos = stop
        return ctx

    @classmethod
    def _read(cls, r: Reader) -> RequestContext:
        request_id, origin, model_id = r.str8("request_id"), r.str8("origin"), r.str8("model_id")
        n = r.count(r.u8("plan length"), 5, "plan")
        plan = []
        for _ in range(n):
            node = r.str8("plan node_id")
            first, last = r.unpack(_STAGE, "plan layers")
            if first > last:
                raise ProtocolError(ErrorCode.MALFORMED, f"plan: first_layer {first} > last_layer {last}")
            plan.append(Stage(node, first, last))
        return cls(request_id, origin, model_id, tuple(plan), Sampling.read(r))


#: Bounded caches of recently encoded / decoded request contexts (oldest entry evicted first).
_CTX_CACHE_SIZE: Final = 256
_CTX_ENCODED: dict[RequestContext, bytes] = {}
_CTX_DECODED: dict[bytes, RequestContext] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CTX_CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


def _ctx_end(mv: memoryview, pos: int) -> int:
    """Offset just past the encoded :class:`RequestContext` at ``pos``; -1 if it runs past the end."""
    try:
        pos += 1 + mv[pos]  # request_id
        pos += 1 + mv[pos]  # origin
        pos += 1 + mv[pos]  # model_id
        stages = mv[pos]
        pos += 1
        for _ in range(stages):
            pos += 1 + mv[pos] + _STAGE.size
        pos = skip_sampling(mv, pos)
    except IndexError:
        return -1
    return pos if pos <= len(mv) else -1


@dataclass(frozen=True, slots=True)
class Prompt:
    """Start (or replay, after failover) a request at the first stage: run ``token_ids`` from ``position``."""

    TYPE: ClassVar[FrameType] = FrameType.PROMPT
    ctx: RequestContext
    token_ids: tuple[int, ...]
    position: int = 0

    def write(self, w: Writer) -> None:
        self.ctx.write(w)
        w.u32(self.position)
        w.u32(len(self.token_ids))
        for t in self.token_ids:
            w.i32(t)

    @classmethod
    def read(cls, r: Reader) -> Prompt:
        ctx = RequestContext.read(r)
        position = r.u32("PROMPT position")
        n = r.count(r.u32("PROMPT token count"), 4, "PROMPT token_ids")
        return cls(ctx, tuple(r.i32("token id") for _ in range(n)), position)


@dataclass(frozen=True, slots=True)
class TensorMessage:
    """Hidden states handed from one stage to the next.

    Attributes:
        ctx: the request context (plan included).
        step: decode step (0 = the prompt).
        position: sequence position of the first row of ``tensor`` (for the KV cache).
        tensor: the activations (float32 or float16, shape ``(tokens, hidden)``).
    """

    TYPE: ClassVar[FrameType] = FrameType.TENSOR
    ctx: RequestContext
    step: int
    position: int
    tensor: Tensor

    def write(self, w: Writer) -> list[bytes | bytearray | memoryview]:
        self.ctx.write(w)
        w.pack(_STEP_POS, self.step, self.position)
        write_tensor_header(w, self.tensor)
        return [self.tensor.data]  # sent after the header, from the array's own buffer

    @classmethod
    def read(cls, r: Reader) -> TensorMessage:
        ctx = RequestContext.read(r)
        step, position = r.unpack(_STEP_POS, "TENSOR step and position")
        return cls(ctx, step, position, read_tensor(r))


@dataclass(frozen=True, slots=True)
class Token:
    """A sampled token, sent to the origin (to stream) and, unless finished, to the first stage.

    Attributes:
        ctx: the request context.
        step: decode step that produced it.
        position: sequence position of this token.
        token_id: the token.
        logprob: its log-probability (NaN when the request did not ask for logprobs: none was computed).
        top_logprobs: the ``sampling.top_logprobs`` best ``(token_id, logprob)`` pairs.
        finished: generation ended with this token (``finish_reason`` says why: "stop", "length").
    """

    TYPE: ClassVar[FrameType] = FrameType.TOKEN
    ctx: RequestContext
    step: int
    position: int
    token_id: int
    logprob: float = 0.0
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finished: bool = False
    finish_reason: str = ""

    def write(self, w: Writer) -> None:
        self.ctx.write(w)
        w.u32(self.step)
        w.u32(self.position)
        w.i32(self.token_id)
        w.f32(self.logprob)
        w.u8(TOKEN_FINISHED if self.finished else 0)
        w.str8(self.finish_reason)
        w.u8(len(self.top_logprobs))
        for tok, lp in self.top_logprobs:
            w.i32(tok)
            w.f32(lp)

    @classmethod
    def read(cls, r: Reader) -> Token:
        ctx = RequestContext.read(r)
        step, position, token_id, logprob = r.u32("step"), r.u32("position"), r.i32("token"), r.f32("logprob")
        flags = r.u8("TOKEN flags")
        if flags & ~TOKEN_FINISHED:
            raise ProtocolError(ErrorCode.MALFORMED, f"TOKEN: unknown flags 0x{flags:02x}")
        reason = r.str8("finish_reason")
        n = r.count(r.u8("top_logprobs count"), 8, "top_logprobs")
        top = tuple((r.i32("top token"), r.f32("top logprob")) for _ in range(n))
        return cls(ctx, step, position, token_id, logprob, top, bool(flags & TOKEN_FINISHED), reason)


@dataclass(frozen=True, slots=True)
class Finish:
    """End of a request: free its state (KV caches). ``reason``: "stop", "length", "cancelled", "error"."""

    TYPE: ClassVar[FrameType] = FrameType.FINISH
    request_id: str
    reason: str = "stop"

    def write(self, w: Writer) -> None:
        w.str8(self.request_id)
        w.str8(self.reason)

    @classmethod
    def read(cls, r: Reader) -> Finish:
        return cls(r.str8("FINISH request_id"), r.str8("FINISH reason"))


@dataclass(frozen=True, slots=True)
class Progress:
    """A stage advanced a long prompt's prefill (after each chunk): tells the origin the request is alive,
    so its wait for the first token measures lack of progress, not total time.

    Attributes:
        request_id: the request.
        done: prompt positions this stage has processed so far.
        total: prompt positions in all.
    """

    TYPE: ClassVar[FrameType] = FrameType.PROGRESS
    request_id: str
    done: int
    total: int

    def write(self, w: Writer) -> None:
        w.str8(self.request_id)
        w.pack(_STEP_POS, self.done, self.total)

    @classmethod
    def read(cls, r: Reader) -> Progress:
        request_id = r.str8("PROGRESS request_id")
        done, total = r.unpack(_STEP_POS, "PROGRESS counts")
        if done > total:
            raise ProtocolError(ErrorCode.MALFORMED, f"PROGRESS: done {done} > total {total}")
        return cls(request_id, done, total)


@dataclass(frozen=True, slots=True)
class NodeState:
    """What one node says about itself in topology gossip.

    Attributes:
        node_id: the node.
        epoch: increases whenever this node's entry changes; receivers keep the highest.
        address: where the node listens (``host:port``, "" if unknown).
        capabilities: device capabilities (tagged values).
        peers: node ids it is directly connected to.
    """

    node_id: str
    epoch: int
    address: str = ""
    capabilities: dict[str, Value] = field(default_factory=dict)
    peers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    """Gossip: the sender's view of the cluster, one entry per known node."""

    TYPE: ClassVar[FrameType] = FrameType.TOPOLOGY
    nodes: tuple[NodeState, ...]

    def write(self, w: Writer) -> None:
        w.u16(len(self.nodes))
        for n in self.nodes:
            w.str8(n.node_id)
            w.u64(n.epoch)
            w.str8(n.address)
            w.value(n.capabilities)
            w.u16(len(n.peers))
            for p in n.peers:
                w.str8(p)

    @classmethod
    def read(cls, r: Reader) -> Topology:
        count = r.count(r.u16("TOPOLOGY count"), 14, "TOPOLOGY nodes")
        nodes = []
        for _ in range(count):
            node_id, epoch, address = r.str8("node_id"), r.u64("epoch"), r.str8("address")
            caps = r.value(what="capabilities")
            if not isinstance(caps, dict):
                raise ProtocolError(ErrorCode.MALFORMED, "TOPOLOGY: capabilities must be a map")
            n = r.count(r.u16("peer count"), 1, "peers")
            peers = tuple(r.str8("peer") for _ in range(n))
            nodes.append(NodeState(node_id, epoch, address, caps, peers))
        return cls(tuple(nodes))
