"""Save a screenshot of a running server's UI after one generation: docs/ui.png.

    .venv/bin/python scripts/screenshot_ui.py [URL] [OUT]

Uses Debian's Chromium through Playwright (no browser download).
"""

from __future__ import annotations

import sys

from playwright.sync_api import expect, sync_playwright


def main(url: str = "http://127.0.0.1:7860", out: str = "docs/ui.png") -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#prompt textarea").fill(
            "A red fox in fresh snow at sunrise, soft golden light, 35mm photo"
        )
        page.locator("#width input").fill("512")
        page.locator("#height input").fill("512")
        page.locator("#batch input[type=number]").fill("2")
        page.locator("#batch input[type=number]").press("Enter")
        page.locator("#generate").click()
        expect(page.locator("#status")).to_contain_text("seeds", timeout=120_000)
        page.locator("#generate").click()
        expect(page.locator("#status")).to_contain_text("memory hit", timeout=120_000)
        page.wait_for_timeout(500)
        page.screenshot(path=out, full_page=True)
        browser.close()
    print(f"saved {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
