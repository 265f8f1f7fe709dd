"""Failover on loopback: what a client sees when a node of its request's plan is killed mid-stream. Real
``exo`` processes on 127.0.0.1 (a 2-node and a 3-node ring, both up all along); prints one JSON object.

    .venv/bin/python benchmarks/failover.py [--runs 20] [--tokens 120] [--seed 0] [--float32]

``--float32`` starts every node with ``--numpy-weights float32`` (the exact float32 path); by default the
nodes run the default (quantized) weights. Every node is started with the ``manual`` discovery module: the
API node's peers.json lists the others, which list nobody.

**Runs.** Run ``i`` uses the 2-node ring when ``i`` is even and the 3-node ring when it is odd (so the
rings alternate and the machine's drift falls on both alike; 20 runs are 10 per ring). Before the first
run each ring serves a warm-up request and then the *undisturbed* run, twice: a greedy stream of
``--tokens`` tokens from the API node (``temperature`` 0), whose token sequence is the ring's reference
(``undisturbed_<n>node.repeatable`` says whether the two agreed; if not, equality with the reference means
little). Each run then: makes sure the ring is whole (a 2-token request whose plan must span every node of
the ring, bounded in time), picks with ``random.Random(--seed)`` a node of that plan other than the API
node and a token position ``k`` in ``[5, tokens - 10]``, streams the same greedy request, and when the
``k``-th token arrives sends that node SIGKILL. After the stream it restarts the killed node (same config
dir, so the same node id, and the same ports) for the next run on that ring.

**Per run.** ``received`` tokens (the ``logprobs`` entries of the stream: one per token), the
``finish_reason``, an ``error`` event if any, ``usage.completion_tokens`` (the server's count, asked for
with ``stream_options.include_usage``), and ``equal``: the sequence is the reference. The *resume point*
``resumed_after`` is the number of tokens the API node replayed (its log line ``request <id>.<n>: ... + K
generated (resumed)``); tokens between ``k`` and it were in flight on the lost plan when the node died.
``stall_s`` is the time from the kill to the first token of the new plan (token ``K + 1``): what the
client waits for, including the loss detection, re-planning, any shard the survivors must load (counted
per run in ``shards_loaded``: the nodes' ``loaded_shards`` before and after) and the replay's prefill.
Without a resume line it falls back to the longest gap between tokens after the kill. The JSON gives
p50/p99/max over all runs, and p50/max apart for the runs whose failover loaded a shard (the first onto a
plan a survivor had not served yet: survivors keep the shards they load) and for the others.
``first_token_after_kill_s`` is the time to the next token of any plan.

**Lost and duplicated tokens.** ``lost = max(0, expected - received)`` and the count's other side,
``extra = max(0, received - expected)`` (counted as duplicated), where ``expected`` is the reference's
length; the run also errs when the server's ``usage`` disagrees with the tokens the client got. A count
alone can hide a loss paired with a duplicate, and a different text is not by itself a loss: on the
quantized path a replayed prefill may round differently from the decode steps it replaces and tip a
near tie the other way (docs/engines.md), after which the text legitimately goes on differently - and
often realigns a few tokens later ("the vast and mysterious ocean" / "the vast ocean"), which looks
exactly like two lost tokens. So where the run first differs from the reference, at index ``p``:

- the two best tokens there (``top_logprobs`` 2, of both streams) are compared: when each stream's best
  is the other's second, the two ranked the same pair of tokens and only the order flipped - a
  ``tie_flip``, a different continuation, never counted as lost or duplicated (``margin_at_divergence``
  gives both streams' logprob gap there, ``text_at_divergence`` the text around it);
- otherwise the run is checked for the two signatures a replay bug leaves, *duplicated d* when
  ``R[p:p+d] == R[p-d:p]`` (the d tokens just streamed came again) and dropping them realigns the rest
  with the reference (``R[p+d:p+d+w] == U[p:p+w]``, ``w = 8`` or to the end), *lost d* when
  ``R[p:p+w] == U[p+d:p+d+w]`` (d reference tokens missing, the rest realigns), ``d`` up to 16 (shown as
  ``realigns``). They count only when ``p`` is a resume point, the one place where the lost plan hands
  over to the new one and a token can go missing or come twice (with no resume line logged: anywhere
  from the kill on); a divergence later than that is the new plan's own wording;
- any other divergence is a different continuation these checks cannot explain (counted in
  ``unexplained_divergences``, not as lost): after the resume point the tokens come from the new plan
  alone, so no reference can tell its different text from a lost token beyond the checks above.
  ``different_continuations`` counts every run that differs from the reference, ``tie_flips`` those of
  them explained by a flipped tie.
  ``repeat_at_resume`` flags a run whose tokens right after the resume point repeat the ones just before
  it where the reference's do not: a possible duplicate, reported, not counted.

``tokens_lost`` and ``tokens_duplicated`` sum the count-based and the signature-based figures.

**Replay cost.** After the runs, on each ring, one non-API node of the plan is killed and, once a request
is planned over the survivors (the surviving plan, warmed up so no shard load is timed), non-streamed
requests with ``max_tokens`` 1 and prompts of about 100 and about 600 tokens (``usage.prompt_tokens``
gives the exact counts; every prompt starts differently) are timed, 5 of each, interleaved; the request
time is the prefill of the prompt plus one sampling. ``replay_ms_per_100_tokens`` is the slope between
the two medians: (t(600) - t(100)) / (tokens(600) - tokens(100)) x 100, in ms (``replay`` also gives the
slope between the two fastest of each, ``ms_per_100_tokens_best``: on a shared machine the spread is
some tens of percent). The fixed costs
(tokenizing, planning, the HTTP round trip) cancel in the difference, so the slope is what a replay of
prompt + streamed tokens adds to a stall per 100 tokens of that context.

All nodes run with one BLAS thread and one compute slot (see benchmarks/cluster.py: several node processes
share this machine's cores). Every request has a timeout and every wait a bound; nothing leaves
127.0.0.1. The exit code is 1 when any run lost or duplicated a token or errored.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exo_core.nodeproc import NodeProcess, NodeProcessError, peers_file

MODEL = "smollm2-135m"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
NODE_ENV = {"OPENBLAS_NUM_THREADS": "1", "EXO_COMPUTE_SLOTS": "1"}
STREAM_TIMEOUT = 120.0  # seconds a streamed read may wait (the server's own token timeout is 30 s)
WHOLE_TIMEOUT = 90.0  # seconds to get a ring back to a plan over all its nodes
REALIGN = 8  # tokens that must agree after a shift for a divergence to count as lost or duplicated
MAX_SHIFT = 16
REPEATS = 5  # timed requests of each prompt length in the replay-cost measurement
RESUMED = re.compile(r"request (\w+)\.(\d+): \d+ prompt tokens \+ (\d+) generated \(resumed\)")


@dataclass
class Ring:
    """``nodes[0]`` is the API node; its peers.json lists the others."""

    size: int
    nodes: list[NodeProcess]
    reference: list[str]
    tops: list[list[tuple[str, float]]]
    plan: list[dict[str, Any]]

    @property
    def api(self) -> NodeProcess:
        return self.nodes[0]

    def by_id(self, node_id: str) -> NodeProcess:
        return next(n for n in self.nodes if n.node_id == node_id)


@dataclass
class Stream:
    tokens: list[str]
    times: list[float]
    tops: list[list[tuple[str, float]]]  # per token, the two best (token, logprob), best first
    finish: str | None
    error: dict[str, Any] | None
    usage: dict[str, Any] | None
    request_id: str


def start_ring(tmp: Path, size: int, extra: list[str]) -> list[NodeProcess]:
    remotes = []
    for i in range(size - 1):
        empty = peers_file(tmp / f"empty{size}-{i}.json", {})
        args = ["--discovery-module", "manual", "--discovery-config-path", str(empty), *extra]
        remotes.append(NodeProcess(tmp / f"ring{size}-r{i}", args=args, env=dict(NODE_ENV)).start())
    peers = peers_file(tmp / f"peers{size}.json", {f"r{i}": r.address for i, r in enumerate(remotes)})
    args = ["--discovery-module", "manual", "--discovery-config-path", str(peers), *extra]
    api = NodeProcess(tmp / f"ring{size}-api", args=args, env=dict(NODE_ENV)).start()
    api.wait_for_nodes(size)
    return [api, *remotes]


def body(tokens: int, content: str = PROMPT) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }


def stream(node: NodeProcess, tokens: int, on_token: Any = None) -> Stream:
    """A greedy stream of ``tokens`` tokens; ``on_token(n)`` is called as the ``n``-th token arrives."""
    out = Stream([], [], [], None, None, None, "")
    req = {**body(tokens), "stream_options": {"include_usage": True}}
    for chunk in node.stream("/v1/chat/completions", req, timeout=STREAM_TIMEOUT):
        if "error" in chunk:
            out.error = chunk["error"]
            break
        out.request_id = out.request_id or str(chunk.get("id", ""))
        out.usage = chunk.get("usage") or out.usage
        for choice in chunk.get("choices", []):
            for item in (choice.get("logprobs") or {}).get("content") or []:
                out.tokens.append(item["token"])
                top = [(t["token"], t["logprob"]) for t in item.get("top_logprobs") or []]
                out.tops.append(sorted(top, key=lambda t: -t[1]))
                out.times.append(time.monotonic())
                if on_token is not None:
                    on_token(len(out.tokens))
            out.finish = choice.get("finish_reason") or out.finish
        if len(out.tokens) > tokens + MAX_SHIFT:  # a bound on the loop, whatever the server does
            break
    return out


def plan_of(node: NodeProcess) -> list[dict[str, Any]]:
    plan = node.get("/v1/topology")["plan"]
    return list(plan["shards"]) if plan else []


def loaded_shards(ring: Ring) -> set[tuple[str, int, int]]:
    """Every shard loaded on a live node of the ring: (node id, first layer, last layer)."""
    out = set()
    for node in ring.nodes:
        if node.proc is None or node.proc.poll() is not None:
            continue
        try:
            shards = node.get("/v1/topology", timeout=5).get("loaded_shards") or []
        except (OSError, ValueError):
            continue
        out |= {(str(node.node_id), s["first_layer"], s["last_layer"]) for s in shards}
    return out


def make_whole(ring: Ring) -> list[dict[str, Any]]:
    """Wait until a request is planned over every node of the ring (a short request loads the shards)."""
    deadline = time.monotonic() + WHOLE_TIMEOUT
    plan: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            ring.api.wait_for_nodes(ring.size, timeout=max(1.0, deadline - time.monotonic()))
            ring.api.post("/v1/chat/completions", body(2), timeout=60)
            plan = plan_of(ring.api)
            if len(plan) == ring.size:
                return plan
        except (OSError, ValueError, NodeProcessError):
            pass
        time.sleep(0.5)
    raise NodeProcessError(
        f"the {ring.size}-node ring did not come back whole within {WHOLE_TIMEOUT} s: {plan}"
    )


def diverges_at(got: list[str], ref: list[str]) -> int | None:
    """The first index where ``got`` and ``ref`` differ (the shorter one's length if one is a prefix of the
    other), or None when they are equal."""
    if got == ref:
        return None
    return next(
        (i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b), min(len(got), len(ref))
    )


def realigns(got: list[str], ref: list[str], p: int) -> tuple[str, int] | None:
    """``("duplicated", d)`` or ``("lost", d)`` when ``got``, which leaves ``ref`` at ``p``, agrees with it
    again once ``d`` repeated tokens are dropped or ``d`` reference tokens are put back (see the module
    docstring); None when neither does."""
    for d in range(1, MAX_SHIFT + 1):
        w = min(REALIGN, len(got) - p - d, len(ref) - p)
        if d <= p and w > 0 and got[p : p + d] == got[p - d : p] and got[p + d : p + d + w] == ref[p : p + w]:
            return ("duplicated", d)
        w = min(REALIGN, len(got) - p, len(ref) - p - d)
        if w > 0 and got[p : p + w] == ref[p + d : p + d + w]:
            return ("lost", d)
    return None


def margin(top: list[tuple[str, float]]) -> float | None:
    """The logprob of the best token minus that of the second."""
    return round(top[0][1] - top[1][1], 4) if len(top) > 1 else None


def tie_flip(ref_top: list[tuple[str, float]], got_top: list[tuple[str, float]]) -> bool:
    """Whether two streams that chose different tokens at one position ranked the same two tokens first
    there, in the other order: the choice between two near-equal tokens tipped by rounding."""
    if len(ref_top) < 2 or len(got_top) < 2:
        return False
    return ref_top[0][0] == got_top[1][0] and ref_top[1][0] == got_top[0][0]


def repeat_at(got: list[str], ref: list[str], r: int) -> bool:
    """Whether the tokens right after index ``r`` repeat those right before it (the reference's do not)."""
    for d in range(1, min(MAX_SHIFT, r) + 1):
        if r + d <= len(got) and got[r : r + d] == got[r - d : r] and ref[r : r + d] != ref[r - d : r]:
            return True
    return False


def resume_points(log: Path, offset: int, request_id: str) -> list[int]:
    """The ``K`` of every ``+ K generated (resumed)`` line the API node logged for ``request_id`` after
    ``offset`` bytes of its log."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    rid = request_id.rsplit("-", 1)[-1]
    return [int(m.group(3)) for m in RESUMED.finditer(text) if not rid or m.group(1) == rid]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def spread(values: list[float]) -> dict[str, Any]:
    return {"runs": len(values), "p50": percentile(values, 0.5), "max": max(values) if values else None}


def one_run(ring: Ring, tokens: int, rng: random.Random) -> dict[str, Any]:
    rec: dict[str, Any] = {"ring": ring.size}
    try:
        plan = make_whole(ring)
    except NodeProcessError as exc:
        return {**rec, "error": str(exc)}
    candidates = [s["node_id"] for s in plan if s["node_id"] != ring.api.node_id]
    victim = ring.by_id(rng.choice(candidates))
    at = rng.randint(5, tokens - 10)
    rec.update(
        kill_at=at,
        victim_stage=[s["node_id"] for s in plan].index(victim.node_id),
        same_plan_as_reference=plan == ring.plan,
    )
    before = loaded_shards(ring)
    offset = ring.api.log_path.stat().st_size
    killed: list[float] = []
    resumes: list[int] = []

    def on_token(n: int) -> None:
        if n == at and not killed and victim.proc is not None:
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed.append(time.monotonic())

    try:
        got = stream(ring.api, tokens, on_token)
    except (OSError, ValueError) as exc:
        got = Stream([], [], [], None, {"message": f"{type(exc).__name__}: {exc}"}, None, "")
    finally:
        if victim.proc is not None and victim.proc.poll() is None and not killed:
            victim.kill()
    ref = ring.reference
    received = len(got.tokens)
    rec.update(received=received, finish_reason=got.finish)
    if got.error is not None:
        rec["error"] = got.error
    if not killed:
        rec.setdefault("error", "the stream ended before the kill")
    else:
        kill_time = killed[0]
        after = [t for t in got.times if t > kill_time]
        resumes = resume_points(ring.api.log_path, offset, got.request_id)
        rec["resumed_after"] = resumes
        if resumes and resumes[0] < received:
            stall = got.times[resumes[0]] - kill_time
        elif after:  # no resume line: the longest silence from the kill on
            stamps = [kill_time, *after]
            stall = max(b - a for a, b in itertools.pairwise(stamps))
        else:
            stall = None
        rec["stall_s"] = None if stall is None else round(stall, 4)
        rec["first_token_after_kill_s"] = round(after[0] - kill_time, 4) if after else None
        if resumes:
            rec["tokens_in_flight"] = resumes[0] - at
            rec["repeat_at_resume"] = repeat_at(got.tokens, ref, resumes[0])
    rec["equal"] = got.tokens == ref
    rec["diverges_at"] = p = diverges_at(got.tokens, ref)
    shifted = {"lost": 0, "duplicated": 0}
    if p is not None and p < min(received, len(ref)):
        # how close the two best tokens were there: a near tie is where rounding can tip the choice
        rec["margin_at_divergence"] = {"undisturbed": margin(ring.tops[p]), "this_run": margin(got.tops[p])}
        flip = tie_flip(ring.tops[p], got.tops[p])
        rec["tie_flip"] = flip
        rec["text_at_divergence"] = {
            "undisturbed": "".join(ref[max(0, p - 4) : p + 6]),
            "this_run": "".join(got.tokens[max(0, p - 4) : p + 6]),
        }
        shift = realigns(got.tokens, ref, p)
        if shift is not None:
            rec["realigns"] = {shift[0]: shift[1]}
            # only where the lost plan handed over can a token be lost or repeated: at a resume point
            # (or, with none logged, anywhere from the kill on); elsewhere it is the new plan's wording
            if not flip and ((p in resumes) if resumes else (killed and p >= at)):
                shifted[shift[0]] = shift[1]
    rec["lost"] = max(0, len(ref) - received) + shifted["lost"]
    rec["duplicated"] = max(0, received - len(ref)) + shifted["duplicated"]
    completion = (got.usage or {}).get("completion_tokens")
    rec["usage_completion_tokens"] = completion
    if "error" not in rec and (got.finish != "length" or completion != received):
        rec["error"] = f"finish_reason {got.finish}, usage {completion} for {received} tokens received"
    rec["shards_loaded"] = len(loaded_shards(ring) - before)
    try:
        victim.kill()  # reaps it
        victim.start()
    except (OSError, NodeProcessError) as exc:
        rec.setdefault("error", f"restarting the killed node: {exc}")
    return rec


def ttft(node: NodeProcess, words: int, tag: int) -> tuple[int, float]:
    """(prompt tokens, seconds) of a non-streamed 1-token request whose prompt has about ``words`` words."""
    filler = " ".join(f"lamp{i % 50} tide stone" for i in range(words // 3))
    t0 = time.perf_counter()
    out = node.post("/v1/chat/completions", body(1, f"Note {tag}. {filler}"), timeout=120)
    return int(out["usage"]["prompt_tokens"]), time.perf_counter() - t0


def replay_cost(ring: Ring, tag: int) -> dict[str, Any]:
    """The slope of a fresh request's time to first token over its prompt length, on the plan that
    remains once one non-API node of the ring is killed (see the module docstring)."""
    plan = make_whole(ring)
    victim = ring.by_id(next(s["node_id"] for s in plan if s["node_id"] != ring.api.node_id))
    victim.kill()
    try:
        deadline = time.monotonic() + WHOLE_TIMEOUT
        survivors: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                ring.api.post("/v1/chat/completions", body(2), timeout=60)  # plans over the survivors, loads
                survivors = plan_of(ring.api)
            except NodeProcessError:
                survivors = []
            if survivors and all(s["node_id"] != victim.node_id for s in survivors):
                break
            time.sleep(0.5)
        else:
            raise NodeProcessError(f"no plan without the killed node within {WHOLE_TIMEOUT} s")
        ttft(ring.api, 400, tag)  # warm-up at the longer length (cache growth)
        samples: dict[str, list[tuple[int, float]]] = {"short": [], "long": []}
        for i in range(REPEATS):
            samples["short"].append(ttft(ring.api, 60, tag + 2 * i + 1))
            samples["long"].append(ttft(ring.api, 400, tag + 2 * i + 2))
    finally:
        victim.kill()
        victim.start()
    n_short = statistics.median(n for n, _ in samples["short"])
    n_long = statistics.median(n for n, _ in samples["long"])
    t_short = statistics.median(t for _, t in samples["short"])
    t_long = statistics.median(t for _, t in samples["long"])
    best_short = min(t for _, t in samples["short"])
    best_long = min(t for _, t in samples["long"])
    return {
        "surviving_plan_nodes": len(survivors),
        "prompt_tokens": [n_short, n_long],
        "ttft_ms": [round(t_short * 1000, 1), round(t_long * 1000, 1)],
        "ms_per_100_tokens": round((t_long - t_short) * 1000 / (n_long - n_short) * 100, 1),
        "ttft_ms_best": [round(best_short * 1000, 1), round(best_long * 1000, 1)],
        "ms_per_100_tokens_best": round((best_long - best_short) * 1000 / (n_long - n_short) * 100, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="kills, alternating 2- and 3-node rings (20)")
    parser.add_argument("--tokens", type=int, default=120, help="tokens per greedy stream (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the victims and kill positions (0)")
    parser.add_argument("--float32", action="store_true", help="every node with --numpy-weights float32")
    args = parser.parse_args()
    if args.runs < 1 or args.tokens < 16:
        parser.error("--runs must be >= 1 and --tokens >= 16")
    extra = ["--numpy-weights", "float32"] if args.float32 else []
    rng = random.Random(args.seed)
    out: dict[str, Any] = {
        "runs": args.runs,
        "rings": [2, 3] if args.runs > 1 else [2],
        "tokens": args.tokens,
        "seed": args.seed,
        "weights": "float32" if args.float32 else "default",
    }
    every: list[dict[str, Any]] = []
    replay: dict[str, Any] = {}
    rings: dict[int, Ring] = {}
    with tempfile.TemporaryDirectory(prefix="exo-bench-failover-") as d:
        tmp = Path(d)
        try:
            for size in out["rings"]:
                nodes = start_ring(tmp, size, extra)
                rings[size] = ring = Ring(size, nodes, [], [], [])
                ring.plan = make_whole(ring)
                first, second = stream(ring.api, args.tokens), stream(ring.api, args.tokens)
                if first.error or second.error:
                    raise NodeProcessError(f"undisturbed run failed: {first.error or second.error}")
                ring.reference, ring.tops = first.tokens, first.tops
                out[f"undisturbed_{size}node"] = {
                    "tokens": len(first.tokens),
                    "finish_reason": first.finish,
                    "repeatable": first.tokens == second.tokens,
                }
            for i in range(args.runs):
                rec = one_run(rings[out["rings"][i % len(out["rings"])]], args.tokens, rng)
                every.append({"run": i, **rec})
            for k, size in enumerate(out["rings"]):
                try:
                    replay[f"{size}node"] = replay_cost(rings[size], 1000 * (k + 1))
                except (OSError, ValueError, KeyError, NodeProcessError) as exc:
                    replay[f"{size}node"] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for ring in rings.values():
                for node in ring.nodes:
                    node.stop()
    timed = [r for r in every if r.get("stall_s") is not None]
    stalls = [r["stall_s"] for r in timed]
    errors = sum(1 for r in [*every, *replay.values()] if "error" in r)
    lost = sum(r.get("lost", 0) for r in every)
    duplicated = sum(r.get("duplicated", 0) for r in every)
    out.update(
        {
            "stall_s": {
                "p50": percentile(stalls, 0.5),
                "p99": percentile(stalls, 0.99),
                "max": round(max(stalls), 3) if stalls else None,
            },
            # the first failover onto a plan a survivor has not served yet loads a shard; later ones do not
            "stall_s_with_shard_load": spread([r["stall_s"] for r in timed if r.get("shards_loaded")]),
            "stall_s_without_shard_load": spread([r["stall_s"] for r in timed if not r.get("shards_loaded")]),
            "tokens_lost": lost,
            "tokens_duplicated": duplicated,
            "repeat_at_resume": sum(1 for r in every if r.get("repeat_at_resume")),
            "equal_to_undisturbed": round(sum(1 for r in every if r.get("equal")) / len(every), 3),
            "different_continuations": sum(1 for r in every if r.get("diverges_at") is not None),
            "tie_flips": sum(1 for r in every if r.get("tie_flip")),
            "unexplained_divergences": sum(
                1
                for r in every
                if r.get("diverges_at") is not None
                and not r.get("tie_flip")
                and not r.get("lost")
                and not r.get("duplicated")
            ),
            "errors": errors,
            "replay_ms_per_100_tokens": {k: v.get("ms_per_100_tokens") for k, v in replay.items()},
            "replay": replay,
            "every_run": every,
        }
    )
    print(json.dumps(out))
    return 1 if lost or duplicated or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
