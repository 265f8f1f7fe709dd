"""Acceptance 1: the default model's logits against llama.cpp (committed fixture, see tests/reference/).

Two llama.cpp runs are compared:

* ``f32``: llama.cpp on an F32 copy of the GGUF with an f32 KV cache, the same arithmetic as ours: top-1 must
  match at every recorded position, logits within 2e-3, and 32 greedy tokens identically.
* ``q4_1``: llama.cpp on the shipped Q4_1 file, which quantizes activations to 8 bits inside its matmuls.
  Logits differ by a near-constant offset plus noise; softmax ignores the offset, so the top-10 values are
  compared after removing their mean difference (<= 0.5), with top-10 overlap >= 8/10. Top-1 must match
  wherever the reference's own top-1/top-2 margin exceeds that noise (0.25); below it (one near-tie in the
  fixture, margin 0.09) our top-1 must be among the reference's tied candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from exo_engine_numpy.shard import NumpyShard

from exo_core.models.source import ModelSource, resolve_model
from exo_core.models.tokenizer import load_tokenizer

NEAR_TIE = 0.25


@pytest.fixture(scope="module")
def source() -> ModelSource:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def shard(source: ModelSource) -> NumpyShard:
    return NumpyShard(source, 0, 29)


def _all_logits(shard: NumpyShard, ids: list[int]) -> np.ndarray:
    cache = shard.new_cache(64, 512)
    return shard.forward(cache, np.array(ids), True)


def test_prompt_ids_match_llamacpp(source: ModelSource, llamacpp_fixture: dict[str, Any]) -> None:
    tok = load_tokenizer(source)
    for p in llamacpp_fixture["q4_1"]["prompts"]:
        assert tok.encode(p["text"]) == p["ids"], p["text"]


def test_logits_match_llamacpp_q4_1(shard: NumpyShard, llamacpp_fixture: dict[str, Any]) -> None:
    checked_last = 0
    for p in llamacpp_fixture["q4_1"]["prompts"]:
        logits = _all_logits(shard, p["ids"])
        for pos, ref in p["positions"].items():
            row = logits[int(pos)]
            ref_ids, ref_vals = ref["ids"], np.array(ref["values"], dtype=np.float64)
            ours = [int(i) for i in np.argsort(-row, kind="stable")[:10]]
            assert len(set(ours) & set(ref_ids)) >= 8, (p["text"], pos, ours, ref_ids)
            delta = row[ref_ids].astype(np.float64) - ref_vals
            assert np.abs(delta - delta.mean()).max() <= 0.5, (p["text"], pos, delta)
            tied = [i for i, v in zip(ref_ids, ref_vals, strict=True) if ref_vals[0] - v < NEAR_TIE]
            if len(tied) == 1:
                assert ours[0] == ref_ids[0], (p["text"], pos)
            else:
                assert ours[0] in tied, (p["text"], pos, ours[0], tied)
            checked_last += int(pos) == len(p["ids"]) - 1
    assert checked_last == len(llamacpp_fixture["q4_1"]["prompts"])


def test_logits_match_llamacpp_f32(shard: NumpyShard, llamacpp_fixture: dict[str, Any]) -> None:
    for p in llamacpp_fixture["f32"]["prompts"]:
        logits = _all_logits(shard, p["ids"])
        for pos, ref in p["positions"].items():
            row = logits[int(pos)]
            assert int(np.argmax(row)) == ref["ids"][0], (p["text"], pos)
            np.testing.assert_allclose(row[ref["ids"]], ref["values"], atol=2e-3)


def test_greedy_decode_matches_llamacpp_f32(
    shard: NumpyShard, source: ModelSource, llamacpp_fixture: dict[str, Any]
) -> None:
    greedy = llamacpp_fixture["f32"]["greedy"]
    cache = shard.new_cache(8, 512)
    logits = shard.forward(cache, np.array(load_tokenizer(source).encode(greedy["prompt"])), False)
    out: list[int] = []
    for _ in greedy["tokens"]:
        out.append(int(np.argmax(logits)))
        logits = shard.forward(cache, np.array([out[-1]]), False)
    assert out == greedy["tokens"]
