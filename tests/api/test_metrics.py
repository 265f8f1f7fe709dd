"""``GET /metrics`` on a real server: Prometheus' text format, counting what the API did."""

from __future__ import annotations

import re

import httpx

from .support import FakeBackend, Script, running_api

MSG_TEXT = "hello"

SAMPLE = re.compile(r"^(exo_[a-z_]+)(\{.*\})? (-?[0-9.e+]+|\+Inf)$")


def parse(text: str) -> dict[str, float]:
    """Every sample as ``name{labels}`` -> value; fails on a line neither a sample nor a comment."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


async def test_metrics_count_requests_tokens_and_outcomes() -> None:
    backend = FakeBackend(lambda call: Script(tokens=[" a", " b", " c"], prompt_tokens=5))
    async with running_api(backend) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(2):
            ok = await client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": MSG_TEXT}]}
            )
            assert ok.status_code == 200
        bad = await client.post("/v1/chat/completions", json={"messages": []})
        assert bad.status_code == 400
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse(response.text)
    assert m['exo_http_requests_total{path="/v1/chat/completions",status="200"}'] == 2
    assert m['exo_http_requests_total{path="/v1/chat/completions",status="400"}'] == 1
    assert m['exo_generations_total{finish_reason="stop"}'] == 2
    assert m["exo_prompt_tokens_total"] == 10 and m["exo_completion_tokens_total"] == 6
    assert m["exo_time_to_first_token_seconds_count"] == 2
    assert m['exo_time_to_first_token_seconds_bucket{le="+Inf"}'] == 2
    assert m["exo_generation_seconds_count"] == 2
    assert m["exo_requests_generating"] == 0 and m["exo_requests_queued"] == 0
    assert m["exo_peers"] == 1  # from the backend's health
    assert m["exo_engine_weights_bytes"] == 111_600_000 and m["exo_engine_kv_cache_bytes"] == 4096


async def test_metrics_need_no_api_key_and_count_refusals() -> None:
    async with running_api(FakeBackend(), api_key="k") as url, httpx.AsyncClient(base_url=url) as client:
        refused = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
        )
        assert refused.status_code == 401
        m = parse((await client.get("/metrics")).text)
    assert m['exo_http_requests_total{path="/v1/chat/completions",status="401"}'] == 1


async def test_metrics_parse_with_prometheus_clients_own_parser() -> None:
    """What a Prometheus server (or anything built on prometheus_client) scrapes: every family parses, with
    its type, and the counters, histograms and gauges carry the values the requests produced."""
    from prometheus_client.parser import text_string_to_metric_families

    backend = FakeBackend(lambda call: Script(tokens=[" a", " b"], prompt_tokens=3))
    async with running_api(backend) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        before = (await client.get("/metrics")).text
        for _ in range(3):
            ok = await client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": MSG_TEXT}]}
            )
            assert ok.status_code == 200
        after = (await client.get("/metrics")).text

    def families(text: str) -> dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
        out = {}
        for fam in text_string_to_metric_families(text):
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
            out[fam.name] = (fam.type, samples)
        return out

    old, new = families(before), families(after)
    assert new["exo_completion_tokens"][0] == "counter"
    assert new["exo_time_to_first_token_seconds"][0] == "histogram"
    assert new["exo_requests_generating"][0] == "gauge"
    tokens = ("exo_completion_tokens_total", ())
    assert new["exo_completion_tokens"][1][tokens] - old["exo_completion_tokens"][1].get(tokens, 0) == 6
    ttft = dict(new["exo_time_to_first_token_seconds"][1])
    assert ttft[("exo_time_to_first_token_seconds_count", ())] == 3
    assert ttft[("exo_time_to_first_token_seconds_bucket", (("le", "+Inf"),))] == 3
    assert new["exo_peer_up"][1] == {("exo_peer_up", (("peer", 'node-"b"'),)): 1.0}  # the quote escaped
    rtt = new["exo_peer_rtt_seconds"]
    assert rtt == ("gauge", {("exo_peer_rtt_seconds", (("peer", 'node-"b"'),)): 0.00125})
    http = new["exo_http_requests"][1]
    assert http[("exo_http_requests_total", (("path", "/v1/chat/completions"), ("status", "200")))] == 3
