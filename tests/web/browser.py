"""Headless Chromium (Debian ``chromium``) driven by Playwright, for the web page tests.

Without Chromium installed the tests are skipped, unless CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

# Flags for running as root in a container, with no traffic beyond loopback.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
]


def chromium_path() -> str:
    """The Chromium binary; skips (or fails on CI) when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires the browser tests to run")
        pytest.skip(reason)
    return path


@asynccontextmanager
async def launch_browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium context (its own profile under ``tmp_path``)."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile (--user-data-dir) for every test
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            yield context
        finally:
            await context.close()


async def open_page(context: BrowserContext, url: str) -> tuple[Page, list[str]]:
    """Open ``url``, collecting page errors and console errors (CSP violations show up there)."""
    page = context.pages[0] if context.pages else await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    await page.goto(url)
    return page, problems
