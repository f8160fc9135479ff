"""report.html in a real browser: Debian's Chromium, headless and offline, driven by Playwright.

CI installs chromium (.ci/run); elsewhere the test skips when it or Playwright is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing; .ci/run installs it")
    pytest.skip(f"{what} is not installed")


@pytest.mark.slow
def test_report_opens_offline_with_every_plot_and_no_console_error(resumed_run, written, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (the dev extra)")
    if not Path(CHROMIUM).is_file():
        _missing("chromium")
    page_path, plots = written
    moved = tmp_path / "report.html"  # away from plots/: everything must be inside the page
    shutil.copyfile(page_path, moved)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(moved.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])"
            )
            title = page.title()
        finally:
            browser.close()
    assert len(images) == len(plots) == 5
    for alt, complete, width in images:
        assert complete and width > 0, f"plot '{alt}' did not load"
    assert problems == []  # a static page has nothing to say on the console
    assert title == f"surefit report: {resumed_run[0].name}"
