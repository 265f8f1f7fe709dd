"""The web chat page in real headless Chromium (Debian ``chromium``), driven by Playwright.

The page is served by a real uvicorn server over the fake backend on loopback. Without Chromium installed
the tests are skipped, unless CI=true, where that is a failure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from api.support import MODEL, Call, FakeBackend, Script, running_api, wait_closed
from playwright.async_api import BrowserContext, expect

from .browser import open_page

DASH = "\N{EN DASH}"  # the page writes layer ranges with an en dash

MARKDOWN_ANSWER = (
    "Here is **bold** and *italic* text with `inline code`.\n\n"
    "```python\nprint('hi <b>')\n```\n\n"
    "- first item\n- second item\n\n"
    "See [the docs](https://example.com/docs) and <img src=x onerror=alert(1)>."
)


def script_for(call: Call) -> Script:
    text = str(call.messages[-1]["content"]) if call.messages else ""
    if "long" in text:
        return Script(tokens=[f" t{i}" for i in range(3000)], delay=0.02)
    if "markdown" in text:
        pieces = re.findall(r".{1,6}", MARKDOWN_ANSWER, flags=re.S)  # small deltas, split mid-markup
        return Script(tokens=pieces, delay=0.02, prompt_tokens=11)
    return Script(tokens=[" plain", " answer"])


async def test_chat_page_streams_markdown_shows_stats_topology_and_stops(
    browser: BrowserContext, tmp_path: Path
) -> None:
    backend = FakeBackend(script_for)
    async with running_api(backend) as url:
        page, problems = await open_page(browser, url + "/")
        expect.set_options(timeout=15_000)

        # model picker, default model selected
        await expect(page.locator("#model option")).to_have_count(2)
        await expect(page.locator("#model")).to_have_value(MODEL)

        # topology panel: two nodes, memory, layer ranges, the connection, the plan bar
        cards = page.locator(".node-card")
        await expect(cards).to_have_count(2)
        await expect(cards.nth(0)).to_contain_text("node-a")
        await expect(cards.nth(0)).to_contain_text("this node")
        await expect(cards.nth(0)).to_contain_text("16.0 GB")
        await expect(cards.nth(0)).to_contain_text(f"layers 0{DASH}19")
        await expect(cards.nth(1)).to_contain_text("node-b")
        await expect(cards.nth(1)).to_contain_text(f"layers 20{DASH}29")
        await expect(page.locator("#connections")).to_contain_text("node-a ↔ node-b")
        await expect(page.locator("#plan-bar .segment")).to_have_count(2)
        await expect(page.locator("#graph")).to_be_visible()
        await expect(page.locator("#graph line")).to_have_count(1)
        await expect(page.locator("#graph circle")).to_have_count(2)

        # a streamed, markdown-rendered answer
        await page.fill("#input", "show me markdown")
        await page.press("#input", "Enter")
        answer = page.locator('.message[data-role="assistant"]').last
        await expect(answer).to_have_attribute("data-state", "streaming")
        await expect(answer.locator(".bubble")).not_to_be_empty()
        partial = await answer.locator(".bubble").inner_text()
        await expect(answer).to_have_attribute("data-state", "done")
        bubble = answer.locator(".bubble")
        final = await bubble.inner_text()
        assert len(partial) < len(final)  # it was shown while streaming
        await expect(bubble.locator("strong")).to_have_text("bold")
        await expect(bubble.locator("em")).to_have_text("italic")
        await expect(bubble.locator("p code")).to_have_text("inline code")
        await expect(bubble.locator("pre code")).to_have_text("print('hi <b>')")
        await expect(bubble.locator("li")).to_have_count(2)
        await expect(bubble.locator("a")).to_have_attribute("href", "https://example.com/docs")
        await expect(bubble.locator("img")).to_have_count(0)  # model output is text, never markup
        assert "<img src=x onerror=alert(1)>" in final
        n_tokens = backend.calls[0].yielded
        await expect(answer.locator(".stats")).to_have_text(
            re.compile(rf"^TTFT \d+ ms · \d+\.\d tok/s · {n_tokens} tokens · done$")
        )
        assert backend.calls[0].messages == [{"role": "user", "content": "show me markdown"}]

        # the next request carries the conversation
        await page.fill("#input", "and again")
        await page.press("#input", "Enter")
        await expect(page.locator('.message[data-role="assistant"]').last).to_have_attribute(
            "data-state", "done"
        )
        history = backend.calls[1].messages
        assert history is not None and [m["role"] for m in history] == ["user", "assistant", "user"]
        assert history[1]["content"] == MARKDOWN_ANSWER

        # the stop button ends a long answer, and the server cancels the backend request
        await page.fill("#input", "a long answer please")
        await page.click("#send")
        answer = page.locator('.message[data-role="assistant"]').last
        await expect(answer.locator(".bubble")).to_contain_text("t5")
        await expect(page.locator("#send")).to_be_hidden()
        await page.click("#stop")
        await expect(answer).to_have_attribute("data-state", "stopped")
        await expect(answer.locator(".stats")).to_contain_text("stopped")
        await expect(page.locator("#send")).to_be_visible()
        long_call = backend.calls[2]
        await wait_closed(long_call, within=10)
        assert not long_call.completed and long_call.yielded < 1000

        await page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        assert (tmp_path / "chat.png").stat().st_size > 0
        assert problems == []


XSS_CASES: list[tuple[str, str]] = [
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    ("[x](JavaScript:alert`1`)", "<p>x</p>"),
    (
        '[x](https://a.example/" onmouseover="alert(1))',
        "<p>[x](https://a.example/&quot; onmouseover=&quot;alert(1))</p>",
    ),
    (
        "```\n</code></pre><img src=x onerror=alert(1)>\n```",
        "<pre><code>&lt;/code&gt;&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt;</code></pre>",
    ),
    ("`<b>` **<i>x</i>**", "<p><code>&lt;b&gt;</code> <strong>&lt;i&gt;x&lt;/i&gt;</strong></p>"),
    (
        "| a | b |\n|---|---|\n| <u>1</u> | 2 |",
        "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>&lt;u&gt;1&lt;/u&gt;</td><td>2</td></tr></tbody></table>",
    ),
]

RENDER_CASES: list[tuple[str, str]] = [
    ("# Title\ntext", "<h1>Title</h1><p>text</p>"),
    ("a\nb\n\nc", "<p>a<br>b</p><p>c</p>"),
    ("1. one\n2. two\n   - nested", "<ol><li>one</li><li>two<ul><li>nested</li></ul></li></ol>"),
    ("3. three", '<ol start="3"><li>three</li></ol>'),
    ("> quoted *it*", "<blockquote><p>quoted <em>it</em></p></blockquote>"),
    (
        "```js\nunclosed while streaming",
        '<pre><code class="language-js">unclosed while streaming</code></pre>',
    ),
    ("snake_case_name and __init__", "<p>snake_case_name and <strong>init</strong></p>"),
    ("~~gone~~ ---", "<p><del>gone</del> ---</p>"),
    (
        "[mail](mailto:a@b.example)",
        '<p><a href="mailto:a@b.example" target="_blank" rel="noopener noreferrer">mail</a></p>',
    ),
]


async def test_markdown_renderer_in_the_browser(browser: BrowserContext) -> None:
    async with running_api(FakeBackend()) as url:
        page, problems = await open_page(browser, url + "/")
        render: Any = await page.evaluate(
            "(cases) => cases.map((c) => window.exoMarkdown.render(c))",
            [source for source, _ in XSS_CASES + RENDER_CASES],
        )
        for (source, expected), html in zip(XSS_CASES + RENDER_CASES, render, strict=True):
            assert html == expected, source
        # and when inserted into the page, no element from the source text appears
        count = await page.evaluate(
            """(sources) => {
                const box = document.createElement('div');
                box.innerHTML = sources.map((s) => window.exoMarkdown.render(s)).join('');
                const bad = 'script, img, u, i, b, [onmouseover], a[href^="javascript"]';
                return box.querySelectorAll(bad).length;
            }""",
            [source for source, _ in XSS_CASES],
        )
        assert count == 0
        assert problems == []


async def test_page_asks_for_the_api_key_when_the_node_requires_one(browser: BrowserContext) -> None:
    backend = FakeBackend()
    async with running_api(backend, api_key="s3cret") as url:
        page, problems = await open_page(browser, url + "/")
        await expect(page.locator("#key-bar")).to_be_visible()
        await expect(page.locator("#status")).to_contain_text("no API key given")
        await page.fill("#key-input", "s3cret")
        await page.click("#key-save")
        await expect(page.locator("#key-bar")).to_be_hidden()
        await expect(page.locator("#model option")).to_have_count(2)
        await expect(page.locator(".node-card")).to_have_count(2)
        await page.fill("#input", "hello")
        await page.press("#input", "Enter")
        answer = page.locator('.message[data-role="assistant"]').last
        await expect(answer).to_have_attribute("data-state", "done")
        await expect(answer.locator(".bubble")).to_have_text("You said: hello")
        # the 401s before the key was given are the only console errors
        assert all("401" in p for p in problems), problems
