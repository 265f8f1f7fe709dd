"""``logit_bias``, ``frequency_penalty`` and ``presence_penalty`` end to end: a real node (NumPy engine, the
tiny random Llama) answers exactly as a reference that applies OpenAI's formula to the same model's logits.

The reference runs the same engine in this process (float32 weights on both sides), adjusts each step's
logits in plain Python and picks the arg-max; the node's text and per-token logprobs must match it.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from exo_core.models.source import ModelSource, resolve_model
from exo_core.models.tokenizer import Tokenizer, load_tokenizer
from exo_core.nodeproc import NodeProcess, NodeProcessError

from .support import no_peers

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
MODEL = "llama"  # the tiny variant's folder name: the id a --model-path is served under
PROMPT = "xyz"  # greedy falls into a loop on one token after three (checked below)
N = 16
EOS = 2
NO_EOS = {EOS: -100.0}  # full-length answers: the loops are what is being compared


def _tiny() -> Any:
    spec = importlib.util.spec_from_file_location("tiny_llama", REFERENCE_DIR / "tiny_llama.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tiny_llama", module)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Answer:
    ids: list[int]
    text: str
    logprobs: list[float]


class Reference:
    """Greedy decoding with OpenAI's adjustments, on the engine's logits, one step at a time."""

    def __init__(self, source: ModelSource) -> None:
        from exo_engine_numpy.engine import NumpyEngine

        self.tokenizer: Tokenizer = load_tokenizer(source)
        self.engine = NumpyEngine(weights="float32")
        anyio.run(self.engine.load, source, 0, 2, 3)
        self._n = 0

    def greedy(
        self, bias: dict[int, float], presence: float = 0.0, frequency: float = 0.0, n: int = N
    ) -> Answer:
        return anyio.run(self._greedy, bias, presence, frequency, n)

    async def _greedy(self, bias: dict[int, float], presence: float, frequency: float, n: int) -> Answer:
        self._n += 1
        rid = f"ref{self._n}"
        logits = await self.engine.forward(rid, np.array(self.tokenizer.encode(PROMPT)))
        counts: dict[int, int] = {}
        ids: list[int] = []
        logprobs: list[float] = []
        for _ in range(n):
            x = []
            for j, logit in enumerate(logits.tolist()):
                c = counts.get(j, 0)
                x.append(logit + bias.get(j, 0.0) - (c * frequency + (presence if c > 0 else 0.0)))
            best = 0
            for j, v in enumerate(x):
                if v > x[best]:
                    best = j
            if best == EOS:
                break
            top = max(x)
            logprobs.append(x[best] - top - math.log(sum(math.exp(v - top) for v in x)))
            ids.append(best)
            counts[best] = counts.get(best, 0) + 1
            logits = await self.engine.forward(rid, np.array([best]))
        await self.engine.free(rid)
        detok = self.tokenizer.detokenizer()
        return Answer(ids, "".join(detok.add(t) for t in ids), logprobs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = _tiny().write("llama", tmp_path_factory.mktemp("tiny") / MODEL)
    return path


@pytest.fixture(scope="module")
def reference(folder: Path) -> Reference:
    return Reference(resolve_model(str(folder)))


@pytest.fixture(scope="module")
def node(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node serving the tiny model on the NumPy engine's float32 path; one compute slot, so the decode
    steps of concurrent requests run as batches."""
    tmp = tmp_path_factory.mktemp("penalties")
    args = [*no_peers(tmp, "solo"), "--model-path", str(folder), "--inference-engine", "numpy"]
    proc = NodeProcess(
        tmp / "solo", args=[*args, "--compute-slots", "1"], env={"EXO_ENGINE_NUMPY_WEIGHTS": "float32"}
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def complete(node: NodeProcess, bias: dict[int, float], **extra: float) -> Answer:
    out = node.post(
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": PROMPT,
            "max_tokens": N,
            "temperature": 0,
            "logprobs": 0,
            "logit_bias": {str(t): b for t, b in bias.items()},
            **extra,
        },
        timeout=60,
    )
    choice = out["choices"][0]
    assert out["usage"]["completion_tokens"] == len(choice["logprobs"]["token_logprobs"])
    return Answer([], choice["text"], choice["logprobs"]["token_logprobs"])


def assert_same(got: Answer, want: Answer) -> None:
    assert got.text == want.text
    assert got.logprobs == pytest.approx(want.logprobs, abs=2e-4)


def test_frequency_penalty_breaks_the_greedy_loop_as_the_reference_says(
    node: NodeProcess, reference: Reference
) -> None:
    plain = reference.greedy(NO_EOS)
    looped = max(set(plain.ids), key=plain.ids.count)
    assert plain.ids.count(looped) >= N // 2, plain.ids  # the loop the penalty must break
    assert_same(complete(node, NO_EOS), plain)
    for presence, frequency in ((0.0, 2.0), (1.5, 0.0), (0.5, 1.0)):
        want = reference.greedy(NO_EOS, presence, frequency)
        assert want.ids != plain.ids and want.ids.count(looped) < plain.ids.count(looped)
        assert_same(complete(node, NO_EOS, presence_penalty=presence, frequency_penalty=frequency), want)


def test_logit_bias_bans_and_forces_a_token(node: NodeProcess, reference: Reference) -> None:
    plain = reference.greedy(NO_EOS)
    looped = max(set(plain.ids), key=plain.ids.count)
    banned = reference.greedy(NO_EOS | {looped: -100.0})
    assert looped not in banned.ids and len(banned.ids) == N
    assert_same(complete(node, NO_EOS | {looped: -100.0}), banned)
    (a,) = reference.tokenizer.encode("a")
    forced = complete(node, {a: 100.0})
    assert forced.text == "a" * N
    assert_same(forced, reference.greedy({a: 100.0}))


def test_concurrent_requests_keep_their_own_counts(node: NodeProcess, reference: Reference) -> None:
    """Three requests at once on one compute slot (their decode steps batched): each still gets exactly
    its own answer, so counts and biases never leak between requests."""
    cases: list[tuple[dict[int, float], dict[str, float]]] = [
        (NO_EOS, {}),
        (NO_EOS, {"frequency_penalty": 2.0}),
        (NO_EOS | {5: 3.0}, {"presence_penalty": 1.0, "frequency_penalty": 0.5}),
    ]
    results: dict[int, Answer | BaseException] = {}

    def run(i: int) -> None:
        try:
            results[i] = complete(node, cases[i][0], **cases[i][1])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for i, (bias, extra) in enumerate(cases):
        got = results[i]
        assert isinstance(got, Answer), got
        assert_same(
            got,
            reference.greedy(bias, extra.get("presence_penalty", 0.0), extra.get("frequency_penalty", 0.0)),
        )


def test_a_token_beyond_the_vocabulary_is_a_400_naming_logit_bias(node: NodeProcess) -> None:
    with pytest.raises(NodeProcessError, match=r"-> 400: .*logit_bias.*token id 320 is out of range"):
        complete(node, {320: 1.0})
    assert complete(node, {319: 1.0}).text  # the last id of the vocabulary is fine
