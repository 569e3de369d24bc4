"""The playground page in a real headless browser (Debian's chromium, driven by playwright): a question streams
into the receiver, T2T and C2C columns with their timings. Marked `browser` (off by default):

    bash scripts/browser_setup.sh && bash scripts/test.sh -m browser
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cache2cache.serving.app import ServeConfig, create_app

from .conftest import LiveServer, tiny_model

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def screenshot_playground(url: str, question: str, out: Path, timeout_s: float = 60) -> dict[str, str]:
    """Open the playground, ask `question`, wait for the three answers, save a screenshot; returns the
    columns' answer and timing texts."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 560})
            page.goto(url)
            page.fill("#question", question)
            page.click("#go")
            for mode in ("receiver", "t2t", "c2c"):
                page.wait_for_selector(f"#col-{mode}[data-done='1']", timeout=timeout_s * 1000)
            texts = {m: page.inner_text(f"#col-{m}") for m in ("receiver", "t2t", "c2c")}
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return texts
        finally:
            browser.close()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium: bash scripts/browser_setup.sh")
def test_playground_streams_three_answers_side_by_side(tmp_path):
    server = LiveServer(create_app(tiny_model(), ServeConfig(max_tokens=64)))
    try:
        texts = screenshot_playground(server.url + "/", "What is a cache?", tmp_path / "playground.png")
    finally:
        server.stop()
    for mode, text in texts.items():
        assert "first token" in text and "total" in text and "error" not in text, (mode, text)
    assert (tmp_path / "playground.png").stat().st_size > 10_000
