"""Drive the playground page in Debian's headless chromium (through playwright): ask a question, wait for the
three answers, save a screenshot. Used by the browser test and `python -m tests.serving.screenshot`."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's probe starts it: no sandbox (root), and no background connections to a closed network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
MODES = ("receiver", "t2t", "c2c")


def screenshot_playground(url: str, question: str, out: Path, timeout_s: float = 60) -> dict[str, str]:
    """Open the playground at `url`, ask `question`, wait until every column is done, save a PNG to `out`;
    returns each column's text (answer and timing line)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 560})
            page.goto(url)
            page.fill("#question", question)
            page.click("#go")
            for mode in MODES:
                page.wait_for_selector(f"#col-{mode}[data-done='1']", timeout=timeout_s * 1000)
            texts = {m: page.inner_text(f"#col-{m}") for m in MODES}
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return texts
        finally:
            browser.close()


def main() -> None:
    from cache2cache.inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER, build
    from cache2cache.serving.app import create_app, start_in_thread
    from cache2cache.serving.server import ServeConfig

    ap = argparse.ArgumentParser(description="Screenshot the playground answering one question (default pair).")
    ap.add_argument("--question", default="Why does ice float on water?")
    ap.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    app = create_app(build(DEFAULT_RECEIVER, [DEFAULT_SHARER], [DEFAULT_FUSER]), ServeConfig(default_max_tokens=64))
    running = start_in_thread(app)
    url = running.url
    try:
        for mode, text in screenshot_playground(url + "/", args.question, args.out, args.timeout).items():
            print(f"--- {mode}\n{text}")
    finally:
        running.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
