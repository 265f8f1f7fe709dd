"""The web chat page of a real 2-node cluster (two ``exo`` processes on loopback) in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, expect

from exo_core.nodeproc import NodeProcess, direct_to, peers_file

from .browser import open_page

pytestmark = pytest.mark.timeout(240)


async def test_page_answers_through_two_nodes_and_shows_them(browser: BrowserContext, tmp_path: Path) -> None:
    empty = peers_file(tmp_path / "empty.json", {})
    remote = NodeProcess(
        tmp_path / "remote", args=["--discovery-module", "manual", "--discovery-config-path", str(empty)]
    )
    local = None
    try:
        remote.start()
        local = NodeProcess(tmp_path / "local", args=direct_to(remote)).start()
        local.wait_for_nodes(2)
        page, problems = await open_page(browser, local.api + "/")
        expect.set_options(timeout=60_000)
        await expect(page.locator("#model")).to_have_value("smollm2-135m")
        await expect(page.locator(".node-card")).to_have_count(2)

        await page.fill("#temperature", "0")  # greedy: the answer is the model's most likely one
        await page.fill("#input", "Tell me the capital of France.")
        await page.press("#input", "Enter")
        answer = page.locator('.message[data-role="assistant"]').last
        await expect(answer).to_have_attribute("data-state", "done")
        await expect(answer.locator(".bubble")).to_contain_text("Paris")
        await expect(answer.locator(".stats")).to_contain_text("tok/s")

        # the topology panel: both nodes, the connection, and after the request both layer ranges
        cards = page.locator(".node-card")
        await expect(cards).to_have_count(2)
        for node in (local, remote):
            assert node.node_id is not None
            await expect(page.locator("#nodes")).to_contain_text(node.node_id[:8])
        await expect(page.locator("#plan-bar .segment")).to_have_count(2)
        await expect(page.locator("#graph line")).to_have_count(1)
        await page.screenshot(path=str(tmp_path / "cluster-chat.png"), full_page=True)
        assert (tmp_path / "cluster-chat.png").stat().st_size > 0
        assert problems == []
    finally:
        for node in (local, remote):
            if node is not None:
                node.stop()
