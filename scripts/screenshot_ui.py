"""Redraw the UI's screenshots in docs/ from a running server: light, dark, Chinese
and phone, each after a generation and its cache hit.

    .venv/bin/python -m scripts.screenshot_ui [URL] [DIR]     (from the repository root)

Writes DIR/ui.png (1280x800, light), ui-dark.png (dark), ui-zh.png (zh-CN) and
ui-phone.png (390x844), each reduced to 256 colours to stay small. Uses Debian's
Chromium through Playwright (no browser download); the Chinese screenshot needs a
CJK font (Debian: fonts-wqy-microhei), or its characters are boxes.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import Browser, expect

from bench.browsers import chromium, open_page, small

SHOTS: list[tuple[str, dict[str, Any], str, int]] = [
    # file, open_page arguments (viewport, browser context), prompt, batch size
    (
        "ui.png",
        {"locale": "en-US"},
        "A red fox in fresh snow at sunrise, soft golden light, 35mm photo",
        2,
    ),
    (
        "ui-dark.png",
        {"locale": "en-US", "color_scheme": "dark"},
        "A cozy reading nook with a rain-streaked window, watercolor",
        2,
    ),
    (
        "ui-zh.png",
        {"locale": "zh-CN"},
        "一只在樱花树下打盹的橘猫，柔和的春日阳光，胶片质感",
        2,
    ),
    (
        "ui-phone.png",
        {"width": 390, "height": 844, "locale": "en-US", "is_mobile": True, "has_touch": True},
        "古风山水画，云雾缭绕的群山与一叶扁舟",
        1,
    ),
]
TIMEOUT_MS = 120_000


def shoot(browser: Browser, url: str, out: Path, context: dict[str, Any], prompt: str, batch: int) -> None:
    page = open_page(browser, url, **context)
    small(page, 512)
    page.locator("#batch input[type=number]").fill(str(batch))
    page.locator("#batch input[type=number]").press("Enter")
    page.locator("#prompt textarea").fill(prompt)
    for _ in range(2):  # a generation, then the same again: a cache hit
        runs = page.evaluate("window.zimage.runs")  # generations the page has finished
        page.locator("#prompt textarea").press("Control+Enter")
        page.wait_for_function("n => window.zimage.runs > n", arg=runs, timeout=TIMEOUT_MS)
    expect(page.locator("#status")).not_to_be_empty()
    page.wait_for_timeout(800)  # images decoded, history drawn
    picture = Image.open(io.BytesIO(page.screenshot()))
    picture.convert("RGB").quantize(256).save(out, optimize=True)
    page.context.close()
    print(f"saved {out} ({out.stat().st_size // 1024} KiB)")


def main(url: str = "http://127.0.0.1:7860", folder: str = "docs") -> None:
    with chromium() as browser:
        for name, context, prompt, batch in SHOTS:
            shoot(browser, url, Path(folder) / name, context, prompt, batch)


if __name__ == "__main__":
    main(*sys.argv[1:])
