"""The system Chromium (Debian's, never a downloaded one) for the browser tests and
scripts/screenshot_ui.py, and a page of the UI in a context of its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking")
TIMEOUT_MS = 60_000  # a generation, on a shared machine
# What `expect` waits for (Playwright's 5 s is short for a page on a loaded 2-core machine).
expect.set_options(timeout=15_000)


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """A headless system Chromium (CHROMIUM_ARGS and `extra_args`), closed afterwards."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Browser, url: str, width: int = 1280, height: int = 800, **context: Any) -> Page:
    """The UI at `url` in a browser context of its own (close it with `page.context.close()`),
    once its Generate button is there and its examples show their text (Gradio draws an
    example's text a moment after its button: a page read before, by axe for one, sees
    buttons with no name)."""
    page = browser.new_context(viewport={"width": width, "height": height}, **context).new_page()
    page.set_default_timeout(15_000)
    page.goto(url)
    page.locator("#generate").wait_for()
    page.wait_for_function(
        "() => { const b = [...document.querySelectorAll('.gallery-item')];"
        " return b.length > 0 && b.every((e) => e.innerText.trim()); }"
    )
    return page


def small(page: Page, size: int = 128) -> None:
    """Set the image size to `size` x `size` (small images keep the tests fast)."""
    for box in ("#width input", "#height input"):
        page.locator(box).fill(str(size))


def generate(page: Page, prompt: str, expect_status: str, *, keys: str | None = None) -> str:
    """Type the prompt and generate (the button, or `keys` pressed in the prompt); once
    the page has finished the run (its own count, static/ui.js), the status line, which
    must contain `expect_status`."""
    page.locator("#prompt textarea").fill(prompt)
    runs = page.evaluate("window.zimage.runs")
    if keys:
        page.locator("#prompt textarea").press(keys)
    else:
        page.locator("#generate").click()
    page.wait_for_function("n => window.zimage.runs > n", arg=runs, timeout=TIMEOUT_MS)
    status = page.locator("#status")
    expect(status).to_contain_text(expect_status)
    return status.inner_text()
