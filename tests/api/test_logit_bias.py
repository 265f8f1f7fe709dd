"""``logit_bias`` and the penalties at the HTTP API: validated to a 400 naming the field, else passed on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import FakeBackend

MSG = [{"role": "user", "content": "hi"}]

BAD_BIAS: list[tuple[str, Any]] = [
    ("not an object", [1, 2]),
    ("word key", {"abc": 1}),
    ("float key", {"1.5": 1}),
    ("negative key", {"-3": 1}),
    ("key with a space", {" 5": 1}),
    ("key beyond 32 bits", {"99999999999": 1}),
    ("id beyond i32", {"2147483648": 1}),
    ("same id twice", {"5": 1, "05": 2}),
    ("value too high", {"5": 100.5}),
    ("value too low", {"5": -101}),
    ("huge integer value", {"5": 10**400}),
    ("string value", {"5": "1"}),
    ("bool value", {"5": True}),
    ("null value", {"5": None}),
    ("too many entries", {str(i): 1 for i in range(301)}),
]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(("case", "bias"), BAD_BIAS, ids=[c[0] for c in BAD_BIAS])
async def test_bad_logit_bias_is_a_400_naming_it(
    client: httpx.AsyncClient, backend: FakeBackend, route: str, case: str, bias: Any
) -> None:
    body: dict[str, Any] = {"messages": MSG} if "chat" in route else {"prompt": "hi"}
    if case == "huge integer value":  # JSON allows it; json= cannot encode it, so send the text
        response = await client.post(
            route,
            content=httpx.Request("POST", "/", json=body).content[:-1]
            + b', "logit_bias": {"5": '
            + b"9" * 400
            + b"}}",
            headers={"content-type": "application/json"},
        )
    else:
        response = await client.post(route, json=body | {"logit_bias": bias})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "logit_bias" and error["message"].startswith("logit_bias"), error
    assert error["type"] == "invalid_request_error"
    assert backend.calls == []


async def test_logit_bias_and_penalties_reach_the_backend(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    bias = {str(i): -1 for i in range(100, 398)} | {"5000": 100, "7": -100.0}  # 300 entries: the most allowed
    chat = await client.post(
        "/v1/chat/completions",
        json={"messages": MSG, "logit_bias": bias, "presence_penalty": 0.5, "frequency_penalty": -2},
    )
    assert chat.status_code == 200, chat.text
    params = backend.calls[0].params
    assert params.presence_penalty == 0.5 and params.frequency_penalty == -2.0
    assert params.logit_bias[-2:] == ((5000, 100.0), (7, -100.0)) and len(params.logit_bias) == 300
    assert all(isinstance(t, int) and isinstance(b, float) for t, b in params.logit_bias)
    plain = await client.post(
        "/v1/completions", json={"prompt": "hi", "logit_bias": None, "presence_penalty": None}
    )
    assert plain.status_code == 200, plain.text
    params = backend.calls[1].params
    assert (params.presence_penalty, params.frequency_penalty, params.logit_bias) == (0.0, 0.0, ())
    empty = await client.post(
        "/v1/completions", json={"prompt": "hi", "logit_bias": {}, "frequency_penalty": 1.5}
    )
    assert empty.status_code == 200, empty.text
    assert backend.calls[2].params.logit_bias == () and backend.calls[2].params.frequency_penalty == 1.5


@pytest.mark.parametrize("value", [-2.01, 2.5])
async def test_penalties_out_of_range_are_400(client: httpx.AsyncClient, value: float) -> None:
    for field in ("presence_penalty", "frequency_penalty"):
        response = await client.post("/v1/completions", json={"prompt": "hi", field: value})
        assert response.status_code == 400 and response.json()["error"]["param"] == field
