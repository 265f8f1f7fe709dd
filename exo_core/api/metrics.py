"""``GET /metrics``: the node's counters in Prometheus' text format (version 0.0.4), for operators.

What is counted (every name starts with ``exo_``):

- ``exo_http_requests_total{path, status}``: answered HTTP requests of the API (``/v1/...``, ``/healthcheck``,
  ``/metrics``), by path (other paths count as ``other``) and status code;
- ``exo_prompt_tokens_total``, ``exo_completion_tokens_total``: tokens of the generations that ended;
- ``exo_generations_total{finish_reason}``: generations by how they ended (``stop``, ``length``, ``error``,
  ``cancelled``);
- ``exo_time_to_first_token_seconds`` and ``exo_generation_seconds``: histograms;
- ``exo_requests_generating``, ``exo_requests_queued``: the admission slots in use and the queue now;
- from the backend's health: ``exo_peers``, ``exo_cluster_nodes`` (gauges), ``exo_failovers_total``, the
  loaded shards' ``exo_engine_weights_bytes`` and ``exo_engine_kv_cache_bytes``, ``exo_peer_up{peer}``
  (1 for each directly connected peer) and ``exo_peer_rtt_seconds{peer}`` (the last PING round trip to it,
  :mod:`exo_core.orchestration.latency`).

No dependency: the format is a few lines of text. The endpoint is outside ``/v1`` (no API key), like
``/healthcheck``.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: paths counted under their own label (anything else is ``other``: labels stay few)
PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/topology", "/healthcheck", "/metrics"}
)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: numeric fields of the backend's health shown as metrics: field -> (name, type)
_HEALTH = {
    "peers": ("exo_peers", "gauge"),
    "nodes": ("exo_cluster_nodes", "gauge"),
    "failovers": ("exo_failovers_total", "counter"),
    "weights_bytes": ("exo_engine_weights_bytes", "gauge"),
    "kv_cache_bytes": ("exo_engine_kv_cache_bytes", "gauge"),
}


class Histogram:
    """A cumulative histogram with fixed upper bounds (plus ``+Inf``)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip([*self.bounds, math.inf], self.counts, strict=True):
            total += count
            le = "+Inf" if bound == math.inf else _number(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {total}')
        out += [f"{name}_sum {_number(self.sum)}", f"{name}_count {total}"]
        return out


class Metrics:
    """The counters of one node's API (see module docstring)."""

    def __init__(self) -> None:
        self.http: Counter[tuple[str, int]] = Counter()
        self.generations: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)

    def answered(self, path: str, status: int) -> None:
        """An HTTP response started with ``status``."""
        self.http[(path if path in PATHS else "other", status)] += 1

    def generation_ended(
        self, *, reason: str, prompt_tokens: int, completion_tokens: int, ttft: float | None, seconds: float
    ) -> None:
        """A generation ended (``reason``: stop, length, error, cancelled)."""
        self.generations[reason] += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if ttft is not None:
            self.ttft.observe(ttft)
        self.duration.observe(seconds)

    def render(self, gauges: Mapping[str, int], health: Mapping[str, Any]) -> str:
        """The exposition text; ``gauges``: name -> value (admission), ``health``: the backend's health."""
        lines = [
            "# HELP exo_http_requests_total HTTP requests answered, by path and status.",
            "# TYPE exo_http_requests_total counter",
        ]
        for (path, status), n in sorted(self.http.items()):
            lines.append(f'exo_http_requests_total{{path="{path}",status="{status}"}} {n}')
        lines += [
            "# HELP exo_generations_total Generations by how they ended.",
            "# TYPE exo_generations_total counter",
        ]
        for reason, n in sorted(self.generations.items()):
            lines.append(f'exo_generations_total{{finish_reason="{reason}"}} {n}')
        for name, value, what in (
            ("exo_prompt_tokens_total", self.prompt_tokens, "Prompt tokens of ended generations."),
            ("exo_completion_tokens_total", self.completion_tokens, "Tokens generated."),
        ):
            lines += [f"# HELP {name} {what}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, hist, what in (
            ("exo_time_to_first_token_seconds", self.ttft, "Seconds from a request to its first token."),
            ("exo_generation_seconds", self.duration, "Seconds a generation took, start to end."),
        ):
            lines += [f"# HELP {name} {what}", f"# TYPE {name} histogram", *hist.lines(name)]
        for name, value in gauges.items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        for key, (name, kind) in _HEALTH.items():
            reported = health.get(key)
            if isinstance(reported, int) and not isinstance(reported, bool):
                lines += [f"# TYPE {name} {kind}", f"{name} {reported}"]
        peers = health.get("peer_ids")
        if isinstance(peers, list):
            lines += [
                "# HELP exo_peer_up Directly connected peers (1 per connected peer id).",
                "# TYPE exo_peer_up gauge",
                *(f'exo_peer_up{{peer="{_label(p)}"}} 1' for p in peers),
            ]
        rtt = health.get("peer_rtt_seconds")
        if isinstance(rtt, dict) and rtt:
            lines += [
                "# HELP exo_peer_rtt_seconds Last PING round trip to each direct peer (every 10 s).",
                "# TYPE exo_peer_rtt_seconds gauge",
                *(f'exo_peer_rtt_seconds{{peer="{_label(p)}"}} {s:.6f}' for p, s in sorted(rtt.items())),
            ]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP response of the app by path and status (:meth:`Metrics.answered`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._metrics.answered(path, int(message["status"]))
            await send(message)

        await self._app(scope, receive, counting_send)


def metrics_route(
    metrics: Metrics, gauges: Callable[[], Mapping[str, int]], health: Callable[[], Mapping[str, Any]]
) -> Callable[[Request], Any]:
    """The ``GET /metrics`` handler."""

    async def handler(request: Request) -> Response:
        try:
            backend_health = health()
        except Exception:  # health is best effort here; /healthcheck reports failures
            backend_health = {}
        return PlainTextResponse(metrics.render(gauges(), backend_health), media_type=CONTENT_TYPE)

    return handler


def _label(value: object) -> str:
    """A label value in the exposition format (backslash, quote and newline escaped)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
