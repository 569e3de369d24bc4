"""The playground page in a real headless browser (Debian's chromium, driven by playwright): a question streams
into the receiver, T2T and C2C columns with their timings. Marked `browser` (off by default):

    bash scripts/browser_setup.sh && bash scripts/test.sh -m browser
"""

from __future__ import annotations

import os

import pytest

from cache2cache.serving.app import create_app
from cache2cache.serving.server import ServeConfig

from .conftest import LiveServer, tiny_model
from .screenshot import CHROMIUM, screenshot_playground

pytestmark = pytest.mark.browser
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
