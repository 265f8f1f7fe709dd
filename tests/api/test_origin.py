"""Origin safety (exo_core.api.origin): the Host check, the Origin check with CORS, the content-type rule.

Each HTTP test runs a real uvicorn server on loopback over the fake backend; the Host and Origin headers a
browser or an attacker would send are set by hand.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exo_core.api import create_app, serve_api
from exo_core.api.errors import internal_error_handler
from exo_core.api.origin import (
    OriginMiddleware,
    is_loopback,
    normalize_origin,
    parse_allowed_hosts,
    split_host,
)
from exo_core.cliflags import build_settings
from exo_core.errors import ConfigError
from exo_core.nodeproc import NodeProcess, peers_file
from exo_core.settings import CoreSettings

from .support import FakeBackend, running_api

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
APP_ORIGIN = "http://localhost:3000"


@pytest.fixture
async def serve(backend: FakeBackend) -> AsyncIterator[Callable[..., Any]]:
    """``async with serve(**create_app_options) as client``: a client of a fresh server over ``backend``."""

    @asynccontextmanager
    async def start(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with (
            running_api(backend, **options) as url,
            httpx.AsyncClient(base_url=url, timeout=10.0) as client,
        ):
            yield client

    yield start


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


# --- Host --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",
        "attacker.example:52415",
        "localhost.attacker.example",
        "127.0.0.1.nip.io",
        "192.168.1.5:52415",
        "[fe80::1]:80",
        "[::1",
        "localhost:99999",
        "local host",
    ],
)
async def test_a_foreign_host_is_refused_on_a_loopback_bind(
    client: httpx.AsyncClient, backend: FakeBackend, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="exo_core.api"):
        response = await client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
        page = await client.get("/", headers={"Host": host})
    _assert_error(response, 403, "host_not_allowed")
    assert response.json()["error"]["type"] == "permission_error"
    assert "--api-allowed-hosts" in response.json()["error"]["message"]
    assert page.status_code == 403  # a rebound name does not get the page either
    assert backend.calls == []
    refusals = [r for r in caplog.records if "-> 403" in r.getMessage()]
    assert len(refusals) == 2  # one line per refused request
    assert "/v1/chat/completions" in refusals[0].getMessage()


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8080",
        "LOCALHOST.",
        "app.localhost:3000",
        "127.0.0.1",
        "127.5.6.7:80",
        "[::1]",
        "[::1]:52415",
        "[::ffff:127.0.0.1]:1",
    ],
)
async def test_loopback_hosts_are_accepted_with_any_port(client: httpx.AsyncClient, host: str) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "You said: hi"


async def test_allowed_hosts_are_accepted_and_others_still_refused(serve: Callable[..., Any]) -> None:
    async with serve(allowed_hosts=["exo.example.com", "Proxy.Example:8443"]) as client:
        for host in ("exo.example.com", "EXO.example.com:443", "proxy.example:8443", "localhost:1"):
            response = await client.get("/v1/models", headers={"Host": host})
            assert response.status_code == 200, (host, response.text)
        for host in ("proxy.example:9000", "proxy.example", "other.example.com"):
            _assert_error(await client.get("/v1/models", headers={"Host": host}), 403, "host_not_allowed")


async def test_a_non_loopback_bind_checks_the_host_only_when_hosts_are_listed(
    serve: Callable[..., Any],
) -> None:
    # the server itself listens on 127.0.0.1 here; bind_host tells the app what the node was told to bind
    async with serve(bind_host="0.0.0.0") as client:
        assert (await client.get("/v1/models", headers={"Host": "192.168.1.5:52415"})).status_code == 200
    async with serve(bind_host="0.0.0.0", allowed_hosts=["exo.lan"]) as client:
        assert (await client.get("/v1/models", headers={"Host": "exo.lan:52415"})).status_code == 200
        assert (await client.get("/v1/models", headers={"Host": "localhost:52415"})).status_code == 200
        _assert_error(
            await client.get("/v1/models", headers={"Host": "192.168.1.5"}), 403, "host_not_allowed"
        )
    async with serve(allowed_hosts=["*"]) as client:
        assert (await client.get("/v1/models", headers={"Host": "anything.example"})).status_code == 200


# --- Origin and CORS ---------------------------------------------------------------------------------------


def _preflight_headers(origin: str, extra: str = "") -> dict[str, str]:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type" + extra,
    }
    return headers


@pytest.mark.parametrize("api_key", [None, "s3cret"])
async def test_a_preflight_from_a_listed_origin_is_answered_without_the_key(
    serve: Callable[..., Any], api_key: str | None
) -> None:
    async with serve(api_key=api_key, cors_origins=[APP_ORIGIN, "https://app.example"]) as client:
        response = await client.options(
            "/v1/chat/completions", headers=_preflight_headers(APP_ORIGIN, ",x-stainless-os")
        )
        assert response.status_code == 204, response.text
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN
        methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
        assert {"GET", "POST"} <= methods
        allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-stainless-os"} <= allowed
        assert int(response.headers["access-control-max-age"]) > 0
        assert "Origin" in response.headers["vary"]
        # the trailing-slash form and a default port written out are the same origin
        response = await client.options("/v1/models/", headers=_preflight_headers("https://app.example:443"))
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == "https://app.example:443"
        # the actual request still needs the key
        response = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP_ORIGIN})
        if api_key:
            _assert_error(response, 401, "invalid_api_key")
        else:
            assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN


async def test_an_unlisted_origin_is_refused_and_nothing_runs(
    serve: Callable[..., Any], backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(api_key="s3cret", cors_origins=[APP_ORIGIN]) as client:
        with caplog.at_level(logging.WARNING, logger="exo_core.api"):
            preflight = await client.options(
                "/v1/chat/completions", headers=_preflight_headers("http://evil.example")
            )
            post = await client.post(
                "/v1/chat/completions",
                content=json.dumps(CHAT),
                headers={
                    "Origin": "http://localhost:3001",
                    "Content-Type": "text/plain",
                    "Authorization": "Bearer s3cret",
                },
            )
            get = await client.get("/healthcheck", headers={"Origin": "null"})
    for response in (preflight, post, get):
        _assert_error(response, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in response.headers
        assert "--api-cors-origins" in response.json()["error"]["message"]
    assert backend.calls == []
    assert len([r for r in caplog.records if "-> 403" in r.getMessage()]) == 3


async def test_the_nodes_own_origin_needs_no_listing(client: httpx.AsyncClient) -> None:
    own = str(client.base_url).rstrip("/")
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": own})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers  # same origin: no CORS needed
    host = client.base_url.host
    port = client.base_url.port
    assert port is not None
    other_port = f"http://{host}:{port + 1 if port < 65535 else port - 1}"
    _assert_error(await client.get("/v1/models", headers={"Origin": other_port}), 403, "origin_not_allowed")
    _assert_error(
        await client.get("/v1/models", headers={"Origin": own.replace("http:", "https:")}),
        403,
        "origin_not_allowed",
    )


async def test_the_own_origin_behind_a_tls_proxy_on_this_machine(serve: Callable[..., Any]) -> None:
    # uvicorn takes the scheme from X-Forwarded-Proto when the proxy connects from loopback
    async with serve(allowed_hosts=["exo.example.com"]) as client:
        headers = {"Host": "exo.example.com", "Origin": "https://exo.example.com"}
        _assert_error(await client.get("/v1/models", headers=headers), 403, "origin_not_allowed")
        response = await client.get("/v1/models", headers={**headers, "X-Forwarded-Proto": "https"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


async def test_the_page_itself_is_not_subject_to_the_origin_check(client: httpx.AsyncClient) -> None:
    for path in ("/", "/static/app.js"):
        response = await client.get(path, headers={"Origin": "http://evil.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


async def test_any_origin_with_star(serve: Callable[..., Any]) -> None:
    async with serve(cors_origins=["*"]) as client:
        for origin in ("http://a.example", "https://b.example:8443", "null"):
            response = await client.options("/v1/chat/completions", headers=_preflight_headers(origin))
            assert response.status_code == 204
            assert response.headers["access-control-allow-origin"] == origin


async def test_cors_headers_on_normal_streaming_and_error_responses(
    serve: Callable[..., Any], backend: FakeBackend
) -> None:
    headers = {"Origin": APP_ORIGIN}
    async with serve(api_key="s3cret", cors_origins=[APP_ORIGIN]) as client:
        auth = {**headers, "Authorization": "Bearer s3cret"}
        responses: dict[str, httpx.Response] = {
            "models": await client.get("/v1/models", headers=auth),
            "chat": await client.post("/v1/chat/completions", json=CHAT, headers=auth),
            "no key": await client.get("/v1/models", headers=headers),
            "unknown model": await client.post(
                "/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth
            ),
            "bad json": await client.post(
                "/v1/chat/completions",
                content=b"{",
                headers={**auth, "Content-Type": "application/json"},
            ),
            "wrong method": await client.get("/v1/chat/completions", headers=auth),
            "no route": await client.get("/v1/nothing", headers=auth),
            "health": await client.get("/healthcheck", headers=headers),
        }
        async with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth
        ) as stream:
            body = "".join([line async for line in stream.aiter_lines()])
            responses["stream"] = stream
    assert "data: [DONE]" in body
    assert responses["stream"].headers["content-type"].startswith("text/event-stream")
    expected = {"models": 200, "chat": 200, "no key": 401, "unknown model": 404, "bad json": 400}
    expected |= {"wrong method": 405, "no route": 404, "health": 200, "stream": 200}
    for name, response in responses.items():
        assert response.status_code == expected[name], (name, response.status_code)
        assert response.headers.get("access-control-allow-origin") == APP_ORIGIN, name
        assert "Origin" in response.headers.get("vary", ""), name
    assert len(backend.calls) == 2  # the plain and the streamed chat


async def test_an_unhandled_exception_still_carries_the_cors_header() -> None:
    # the API's routes turn their errors into APIError; this app lets one escape to starlette's last resort
    async def crash(request: Request) -> Response:
        raise RuntimeError("boom")

    app = Starlette(
        routes=[Route("/v1/crash", crash)],
        middleware=[Middleware(OriginMiddleware, bind_host="127.0.0.1", cors_origins=[APP_ORIGIN])],
        exception_handlers={Exception: internal_error_handler},
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_api, app, "127.0.0.1", 0)
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"http://127.0.0.1:{port}/v1/crash", headers={"Origin": APP_ORIGIN})
        tg.cancel_scope.cancel()
    assert response.status_code == 500
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert response.json()["error"] == {
        "message": "internal error: RuntimeError: boom",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }


# --- content type ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "browser_headers",
    [
        {"Origin": "SELF"},
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Mode": "navigate"},
        {"Origin": APP_ORIGIN},
    ],
)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_browser_post_must_be_json(
    serve: Callable[..., Any],
    backend: FakeBackend,
    browser_headers: dict[str, str],
    content_type: str | None,
) -> None:
    async with serve(cors_origins=[APP_ORIGIN]) as client:
        own = str(client.base_url).rstrip("/")
        headers = {k: own if v == "SELF" else v for k, v in browser_headers.items()}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.post("/v1/chat/completions", content=json.dumps(CHAT), headers=headers)
        _assert_error(response, 415, "unsupported_media_type")
        assert "application/json" in response.json()["error"]["message"]
        if headers.get("Origin") == APP_ORIGIN:  # a listed origin can read why
            assert response.headers["access-control-allow-origin"] == APP_ORIGIN
        json_response = await client.post(
            "/v1/chat/completions",
            content=json.dumps(CHAT),
            headers={**headers, "Content-Type": "application/json; charset=utf-8"},
        )
        assert json_response.status_code == 200, json_response.text
    assert len(backend.calls) == 1


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
async def test_clients_that_are_not_browsers_may_send_any_content_type(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    # what `curl URL -d '{...}'` sends: a form content type, no Origin, no Sec-Fetch-*
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/v1/chat/completions", content=json.dumps(CHAT), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "You said: hi"


# --- parsing and settings ----------------------------------------------------------------------------------


def test_host_header_parsing() -> None:
    assert split_host("Example.COM.") == ("example.com", None)
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("::1") == ("::1", None)
    assert split_host("127.0.0.1:52415") == ("127.0.0.1", 52415)
    for bad in (
        "",
        "a b",
        "[::1",
        "[::1]x",
        "[example.com]",
        "host:",
        "host:0",
        "host:65536",
        "a:b:c",
        "h/x",
    ):
        assert split_host(bad) is None, bad
    assert is_loopback("localhost") and is_loopback("x.localhost") and is_loopback("127.1.2.3")
    assert is_loopback("::1") and is_loopback("[::1]") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("localhost.example")
    assert parse_allowed_hosts(["A.example", "b.example:81", "*"]) == (
        ("a.example", None),
        ("b.example", 81),
        ("*", None),
    )


def test_origin_normalization() -> None:
    assert normalize_origin("HTTP://LocalHost:80/") == "http://localhost"
    assert normalize_origin("https://a.example:443") == "https://a.example"
    assert normalize_origin("https://a.example:8443") == "https://a.example:8443"
    assert normalize_origin("http://[::1]:3000") == "http://[::1]:3000"
    assert normalize_origin("chrome-extension://abcdef") == "chrome-extension://abcdef"
    for bad in (
        "null",
        "localhost:3000",
        "http://a.example/path",
        "http://u@a.example",
        "http://a.example:x",
        "",
    ):
        assert normalize_origin(bad) is None, bad


def test_settings_name_the_flag_of_a_bad_entry() -> None:
    settings = build_settings(
        CoreSettings, {"api_allowed_hosts": "exo.example.com, a:8443", "api_cors_origins": "http://x:3000, *"}
    )
    assert settings.api_allowed_hosts == "exo.example.com, a:8443"
    with pytest.raises(ConfigError, match=r"--api-cors-origins / EXO_API_CORS_ORIGINS.*scheme://host"):
        build_settings(CoreSettings, {"api_cors_origins": "localhost:3000"})
    with pytest.raises(ConfigError, match=r"--api-cors-origins.*'\*'"):
        build_settings(CoreSettings, {"api_cors_origins": "null"})
    with pytest.raises(ConfigError, match=r"--api-allowed-hosts / EXO_API_ALLOWED_HOSTS.*no scheme"):
        build_settings(CoreSettings, {"api_allowed_hosts": "https://exo.example.com"})
    with pytest.raises(ValueError, match="not an origin"):
        create_app(FakeBackend(), cors_origins=["http://a.example/x"])


@pytest.mark.timeout(90)
def test_a_real_node_applies_its_flags(exo_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """The node wires --api-allowed-hosts and --api-cors-origins (nodeproc binds the API to 127.0.0.1)."""
    peers = peers_file(tmp_path / "peers.json", {})
    node = exo_node(
        "--discovery-module",
        "manual",
        "--discovery-config-path",
        str(peers),
        "--api-allowed-hosts",
        "exo.example.com",
        "--api-cors-origins",
        APP_ORIGIN,
        "--api-key",
        "s3cret",
    )
    with httpx.Client(base_url=node.api, timeout=10) as client:
        assert client.get("/healthcheck", headers={"Host": "exo.example.com"}).status_code == 200
        _assert_error(
            client.get("/healthcheck", headers={"Host": "attacker.example"}), 403, "host_not_allowed"
        )
        preflight = client.options("/v1/chat/completions", headers=_preflight_headers(APP_ORIGIN))
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        _assert_error(
            client.get("/v1/models", headers={"Origin": "http://evil.example"}), 403, "origin_not_allowed"
        )
    assert "host_not_allowed" in node.tail(200) or "attacker.example" in node.tail(200)
