"""Origin safety in real headless Chromium: a page from another origin must not drive the node's API.

The node is a real uvicorn server over the fake backend on 127.0.0.1; "another site" is a second real HTTP
server on another loopback port (a different origin to the browser), and DNS rebinding is played by mapping
a name to 127.0.0.1 in Chromium's resolver. Without Chromium installed the tests are skipped, unless CI=true,
where that is a failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from api.support import FakeBackend, running_api
from playwright.async_api import BrowserContext, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from exo_core.api import serve_api

from .browser import CHROMIUM_FLAGS, chromium_path, open_page

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

#: Runs in the other site's page: the requests a hostile (or a legitimate) web app would make.
FETCHES = """async ([url, body, key]) => {
    const auth = key ? {"Authorization": "Bearer " + key} : {};
    const attempt = async (init) => {
        try {
            const r = await fetch(url, {method: "POST", body, ...init});
            return {status: r.status, text: await r.text()};
        } catch (e) {
            return {error: String(e)};
        }
    };
    return {
        plain: await attempt({headers: {"Content-Type": "text/plain", ...auth}}),
        form: await attempt({headers: {"Content-Type": "application/x-www-form-urlencoded"}}),
        blind: await attempt({mode: "no-cors", headers: {"Content-Type": "text/plain"}}),
        json: await attempt({headers: {"Content-Type": "application/json", ...auth}}),
        stream: await attempt({
            headers: {"Content-Type": "application/json", ...auth},
            body: JSON.stringify({...JSON.parse(body), stream: true}),
        }),
    };
}"""


async def _other_site(request: Request) -> Response:
    return HTMLResponse("<!doctype html><title>another site</title><p>an app on another origin</p>")


@asynccontextmanager
async def other_site() -> AsyncIterator[str]:
    """A second web server on another loopback port: another origin to the browser. Yields its URL."""
    app = Starlette(routes=[Route("/", _other_site)])
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_api, app, "127.0.0.1", 0)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def _fetches(page: Page, node_url: str, key: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        FETCHES, [node_url + "/v1/chat/completions", json.dumps(CHAT), key]
    )
    return result


async def test_a_page_from_another_origin_cannot_make_the_node_generate(
    browser: BrowserContext, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    async with other_site() as site, running_api(backend) as node:
        page = context_page = browser.pages[0] if browser.pages else await browser.new_page()
        await page.goto(site + "/")
        with caplog.at_level(logging.WARNING, logger="exo_core.api"):
            results = await _fetches(page, node)
            # a classic form POST (a navigation, no fetch at all) from the other site
            await page.set_content(
                f'<form method="post" enctype="text/plain" action="{node}/v1/chat/completions">'
                '<input name=\'{"messages":[{"role":"user","content":"hi"}],"x":"\' value=\'"}\'></form>'
            )
            async with page.expect_navigation():
                await page.evaluate("document.forms[0].submit()")
            form_page = await context_page.content()
    # the browser sees every attempt fail: no CORS header for this origin
    for name in ("plain", "form", "json", "stream"):
        assert "Failed to fetch" in results[name].get("error", ""), (name, results[name])
    assert results["blind"] == {"status": 0, "text": ""}  # opaque: the page learns nothing, and...
    assert backend.calls == []  # ...no request, simple or not, ran a generation
    assert "origin_not_allowed" in form_page
    refused = [r.getMessage() for r in caplog.records if "-> 403" in r.getMessage()]
    # the server did get them: 4 simple POSTs (plain, form, blind, the form navigation), 2 preflights
    assert sum("POST /v1/chat/completions" in m for m in refused) == 4, refused
    assert sum("OPTIONS /v1/chat/completions" in m for m in refused) == 2, refused


async def test_a_listed_origin_can_use_the_api_with_json(browser: BrowserContext) -> None:
    backend = FakeBackend()
    async with other_site() as site:
        async with running_api(backend, api_key="s3cret", cors_origins=[site]) as node:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(site + "/")
            results = await _fetches(page, node, key="s3cret")
    assert results["json"]["status"] == 200, results["json"]
    assert json.loads(results["json"]["text"])["choices"][0]["message"]["content"] == "You said: hi"
    assert results["stream"]["status"] == 200, results["stream"]
    assert results["stream"]["text"].rstrip().endswith("data: [DONE]")
    # a simple (non-JSON) POST from a listed origin is refused, and the app can read why
    for name in ("plain", "form"):
        assert results[name]["status"] == 415, (name, results[name])
        assert "unsupported_media_type" in results[name]["text"]
    assert results["blind"] == {"status": 0, "text": ""}
    assert len(backend.calls) == 2 and all(c.completed for c in backend.calls)  # json and stream only


async def test_the_nodes_own_page_still_works(browser: BrowserContext) -> None:
    backend = FakeBackend()
    async with running_api(backend, cors_origins=["http://localhost:3000"]) as node:
        page, problems = await open_page(browser, node + "/")
        await expect(page.locator("#model option")).to_have_count(2)
        await page.fill("#input", "hello")
        await page.press("#input", "Enter")
        answer = page.locator('.message[data-role="assistant"]').last
        await expect(answer).to_have_attribute("data-state", "done", timeout=15_000)
        await expect(answer.locator(".bubble")).to_have_text("You said: hello")
        assert backend.calls[0].messages == [{"role": "user", "content": "hello"}]
        assert problems == []


async def test_a_rebound_name_gets_nothing_from_a_loopback_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, so its page is same-origin with the node."""
    backend = FakeBackend()
    executable = chromium_path()
    async with running_api(backend) as node, async_playwright() as playwright:
        port = node.rsplit(":", 1)[1]
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_FLAGS, "--host-resolver-rules=MAP attacker.test 127.0.0.1"],
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            with caplog.at_level(logging.WARNING, logger="exo_core.api"):
                response = await page.goto(f"http://attacker.test:{port}/")
                assert response is not None and response.status == 403
                assert "host_not_allowed" in await page.content()
                results = await _fetches(page, f"http://attacker.test:{port}")
        finally:
            await context.close()
    for name in ("plain", "form", "json", "stream"):
        assert results[name]["status"] == 403, (name, results[name])  # same origin: it may read the refusal
        assert "host_not_allowed" in results[name]["text"]
    assert backend.calls == []
    assert all("attacker.test" in r.getMessage() for r in caplog.records if "-> 403" in r.getMessage())
    assert sum("-> 403" in r.getMessage() for r in caplog.records) >= 6
