"""Running this node's stage of a request: PROMPT / TENSOR / TOKEN in, TENSOR or TOKEN out.

The first stage of a plan takes token ids (the prompt, then each sampled token); every stage runs its
layers and hands the hidden state to the next stage; the last stage samples a token and sends it to the
request's origin (to stream) and, unless generation is finished, to the first stage as the next input.
Any failure becomes an ``ERROR`` for the origin, naming this node and its layers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping

import anyio
import numpy as np

from exo_core.engine import InferenceEngine, threads_per_pass
from exo_core.models.sampling import (
    adjust_logits,
    make_rng,
    sample,
    skip_tokens,
    token_logprob,
    top_logprobs,
)
from exo_core.orchestration.batching import StepBatcher
from exo_core.orchestration.router import Send
from exo_core.orchestration.shards import ShardHost
from exo_core.protocol.control import Error
from exo_core.protocol.errors import ErrorCode
from exo_core.protocol.inference import Finish, Progress, Prompt, RequestContext, TensorMessage, Token
from exo_core.protocol.tensor import Tensor

log = logging.getLogger(__name__)

#: finished request ids remembered, to drop the steps of theirs still in flight (a stop string seen at the
#: origin finishes a request while its next token travels to the first stage)
FINISHED_REMEMBERED = 4096

#: default chunk of a long prompt's prefill, in positions (``--prefill-chunk``)
PREFILL_CHUNK = 512


def concurrent_forwards(env: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """How many forward passes this node runs at once: cores / BLAS threads per pass, at least 1.

    A pass already uses every BLAS thread, so overlapping more passes of concurrent requests than that
    only oversubscribes the cores (measured: 8 concurrent streams on a 2-node loopback cluster took 83 s
    with unbounded overlap, 10 s bounded). With ``OPENBLAS_NUM_THREADS=1`` on 2 cores, two passes overlap.
    Decode steps that queue for a slot are batched into one pass (:mod:`exo_core.orchestration.batching`).
    """
    cores = cores or os.cpu_count() or 1
    threads = threads_per_pass(env)
    return max(1, cores // threads) if threads else 1


class StageRunner:
    """Executes the stages of any request that this node has in its plan.

    Args:
        slots: forward passes run at once (``--compute-slots``); 0 picks :func:`concurrent_forwards`.
        idle_timeout: seconds without a message after which a request's caches are freed.
        prefill_chunk: prompts longer than this many positions are run in chunks of it (``_prefill``).
    """

    def __init__(
        self,
        self_id: str,
        shards: ShardHost,
        send: Send,
        *,
        idle_timeout: float = 600.0,
        slots: int = 0,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        self.self_id = self_id
        self._shards = shards
        self._send = send
        self._rngs: dict[str, np.random.Generator] = {}
        #: request id -> token id -> times sampled in this completion (only for requests with penalties)
        self._counts: dict[str, dict[int, int]] = {}
        self._active: dict[str, float] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._idle_timeout = idle_timeout
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self._prefill_chunk = prefill_chunk
        self.batcher = StepBatcher(anyio.CapacityLimiter(slots or concurrent_forwards()))

    def in_flight(self) -> int:
        """Requests with a stage here that did not finish yet (what a draining node waits for)."""
        return len(self._active)

    # ---- message entry points ------------------------------------------------------------------------

    async def on_prompt(self, msg: Prompt) -> None:
        self._finished.pop(msg.ctx.request_id, None)  # a prompt starts the request (again)
        ids = np.asarray(msg.token_ids, dtype=np.int64)
        await self._guarded(msg.ctx, 0, ids, 0, msg.position)

    async def on_tensor(self, msg: TensorMessage) -> None:
        index = self._index(msg.ctx)
        if index is None or index == 0:
            await self._fail(
                msg.ctx, f"node {self.self_id} got hidden states but runs no later stage of the plan"
            )
            return
        await self._guarded(msg.ctx, index, msg.tensor.to_numpy(), msg.step, msg.position)

    async def on_token(self, msg: Token) -> None:
        """A sampled token: next input when this node runs the first stage."""
        if msg.finished or not msg.ctx.plan or msg.ctx.plan[0].node_id != self.self_id:
            return
        ids = np.asarray([msg.token_id], dtype=np.int64)
        await self._guarded(msg.ctx, 0, ids, msg.step + 1, msg.position)

    async def on_finish(self, msg: Finish) -> None:
        self._finished[msg.request_id] = None
        self._finished.move_to_end(msg.request_id)
        while len(self._finished) > FINISHED_REMEMBERED:
            self._finished.popitem(last=False)
        self._rngs.pop(msg.request_id, None)
        self._counts.pop(msg.request_id, None)
        self._active.pop(msg.request_id, None)
        self.batcher.forget(msg.request_id)
        await self._shards.free(msg.request_id)

    async def sweep(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Free requests whose origin went silent (never finished them), so caches cannot leak."""
        task_status.started()
        while True:
            await anyio.sleep(min(30.0, self._idle_timeout / 2))
            now = time.monotonic()
            for rid, seen in list(self._active.items()):
                if now - seen > self._idle_timeout:
                    log.warning("freeing request %s: no message for %.0f s", rid, now - seen)
                    await self.on_finish(Finish(rid, "cancelled"))

    # ---- internals -----------------------------------------------------------------------------------

    def _late(self, request_id: str) -> bool:
        """A step of a request already finished here (it was in flight when the FINISH came): dropped."""
        if request_id in self._finished:
            log.debug("dropping a late step of finished request %s", request_id)
            return True
        return False

    def _index(self, ctx: RequestContext) -> int | None:
        for i, stage in enumerate(ctx.plan):
            if stage.node_id == self.self_id:
                return i
        return None

    async def _guarded(
        self, ctx: RequestContext, index: int, x: np.ndarray, step: int, position: int
    ) -> None:
        try:
            await self._run(ctx, index, x, step, position)
        except Exception as exc:
            stage = ctx.plan[index] if index < len(ctx.plan) else None
            where = f"layers {stage.first_layer}..{stage.last_layer}" if stage else "no stage"
            log.exception("request %s failed on this node (%s)", ctx.request_id, where)
            await self._fail(ctx, f"node {self.self_id} ({where}): {type(exc).__name__}: {exc}")

    async def _fail(self, ctx: RequestContext, message: str) -> None:
        try:
            await self._send(ctx.origin, Error(int(ErrorCode.INTERNAL), message, ctx.request_id))
        except Exception as exc:
            log.warning("cannot report the failure of request %s to %s: %s", ctx.request_id, ctx.origin, exc)

    async def _run(self, ctx: RequestContext, index: int, x: np.ndarray, step: int, position: int) -> None:
        if not ctx.plan or ctx.plan[index].node_id != self.self_id:
            raise ValueError(f"stage {index} of the plan is not this node's")
        rid = ctx.request_id
        if self._late(rid):  # it was in flight when the FINISH came
            return
        self._active[rid] = time.monotonic()
        stage = ctx.plan[index]
        engine = await self._shards.engine_for((ctx.model_id, stage.first_layer, stage.last_layer), rid)
        if self._late(rid):  # finished while the shard was looked up (or loaded)
            return
        cached = engine.position(rid)
        if cached != position:
            raise RuntimeError(f"KV cache is at position {cached}, the message is for position {position}")
        is_last = index + 1 == len(ctx.plan)
        if len(x) > self._prefill_chunk:
            out = await self._prefill(engine, ctx, x, is_last)
        else:
            out = await self.batcher.forward(engine, rid, x, comes_back=len(ctx.plan) == 1)
        if out is None or rid not in self._active:  # finished or cancelled while this step waited or ran
            await self._shards.free(rid)  # the step may have made a fresh cache for it
            return
        if index + 1 < len(ctx.plan):
            nxt = ctx.plan[index + 1].node_id
            await self._send(nxt, TensorMessage(ctx, step, position, Tensor.from_numpy(out)))
            return
        token = await self._sample(ctx, out, step, position + len(x))
        targets = dict.fromkeys([ctx.origin] + ([] if token.finished else [ctx.plan[0].node_id]))
        for target in targets:
            await self._send(target, token)

    async def _prefill(
        self, engine: InferenceEngine, ctx: RequestContext, x: np.ndarray, is_last: bool
    ) -> np.ndarray | None:
        """A long prompt in chunks of ``prefill_chunk`` positions, each in its own compute slot: other
        requests' steps run between chunks (one long prompt does not hold a slot for seconds), a request
        finished meanwhile (client gone, failover) stops at the next chunk (``None``), and after each chunk
        the origin gets a PROGRESS (its wait for the first token measures lack of progress)."""
        rid = ctx.request_id
        outs = []
        for start in range(0, len(x), self._prefill_chunk):
            if rid not in self._active:
                log.info("request %s finished during its prefill: stopped at %d of %d", rid, start, len(x))
                return None
            outs.append(await self.batcher.forward(engine, rid, x[start : start + self._prefill_chunk]))
            done = min(start + self._prefill_chunk, len(x))
            try:
                await self._send(ctx.origin, Progress(rid, done, len(x)))
            except Exception as exc:  # the origin learns of the request's fate through its other messages
                log.debug("PROGRESS of %s to %s not delivered: %s", rid, ctx.origin, exc)
        # the last stage returns the logits of a chunk's last position: the prompt's last chunk has the ones
        return outs[-1] if is_last else np.concatenate(outs, axis=0)

    async def _sample(self, ctx: RequestContext, logits: np.ndarray, step: int, position: int) -> Token:
        # Lone and batched steps both come through here: the batcher only runs the forward passes.
        run = ctx.sampling
        params = run.params
        rng = self._rngs.get(ctx.request_id)
        if rng is None:
            rng = self._rngs[ctx.request_id] = make_rng(params.seed)
            # a replay after a failover: continue the random sequence where the lost plan left it
            skip_tokens(rng, len(run.resumed), params.temperature, params.top_k)
        counts = None
        if params.presence_penalty or params.frequency_penalty:
            if step == 0:  # the request's first token: a PROMPT (re)started it, nothing sampled here yet
                self._counts[ctx.request_id] = dict(Counter(run.resumed))
            counts = self._counts.setdefault(ctx.request_id, {})
        logits = adjust_logits(
            logits, counts, params.presence_penalty, params.frequency_penalty, params.logit_bias
        )
        token_id = sample(logits, params.temperature, params.top_p, params.top_k, rng)
        if counts is not None:
            counts[token_id] = counts.get(token_id, 0) + 1
        top = tuple(top_logprobs(logits, params.top_logprobs)) if params.top_logprobs else ()
        # computed only when asked for (a softmax over the vocabulary per token); NaN on the wire otherwise
        logprob = token_logprob(logits, token_id) if params.logprobs else math.nan
        reason = ""
        if token_id in run.stop_token_ids:
            reason = "stop"
        elif step + 1 >= run.max_tokens:  # the origin bounded max_tokens by the room left in the context
            reason = "length"
        return Token(ctx, step, position, token_id, logprob, top, bool(reason), reason)
