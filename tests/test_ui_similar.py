"""The near-repeats panel of the UI in a real headless Chromium (Debian's), over a real
server with near-repeats on and an engine that waits at a gate: while a reworded
prompt's image is being made, the page shows what was already made for similar
prompts of its own namespace only; a click uses that image, stops the generation
(nothing of it stored) and is counted as a suggestion used."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench.browsers import TIMEOUT_MS, chromium, open_page, small
from bench.procs import wait_until
from tests.conftest import Server
from web.ui_stats import latency_text

FOX = "a red fox standing in the snow"
REWORDED = "a red fox in the snow, photo"
OTHERS = "a red fox standing in snow"  # another namespace's, nearer still: never shown
VIEWER_IMAGE = "#result .media-button img"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, the server's engine holds at its next denoising step."""
    return tmp_path_factory.mktemp("gate") / "hold"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gate: Path) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("similar-ui") / "cache",
        "--similar-prompts",
        env={"ZIMAGE_FAULT_GATE_GENERATION": str(gate)},
        faults=True,
    )
    try:
        yield srv.wait_ready()
    finally:
        gate.unlink(missing_ok=True)
        srv.stop()


def made(server: Server, prompt: str, namespace: str) -> dict[str, object]:
    query = {"prompt": prompt, "width": 64, "height": 64, "seed": 7}
    resp = server.client.get("/run", params=query, headers={"X-Namespace": namespace})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_reworded_prompt_shows_what_was_made_and_a_click_uses_it(server: Server, gate: Path) -> None:
    ours = made(server, FOX, "public")  # the page's namespace (no login)
    made(server, OTHERS, "alice")
    stats = server.client.get("/api/cache/stats").json()
    generations, near = stats["generations"], stats["near_repeats"]
    with chromium() as browser:
        page = open_page(browser, server.url, locale="en-US")
        small(page, 64)
        gate.touch()  # the new image is being made while the panel is looked at
        page.locator("#prompt textarea").fill(REWORDED)
        runs = page.evaluate("window.zimage.runs")
        page.locator("#generate").click()

        panel = page.locator("#similar")
        expect(panel).to_contain_text("Already made for similar prompts")
        thumbnails = page.locator("#similar-gallery .thumbnail-item")
        expect(thumbnails).to_have_count(1)  # alice's nearer prompt is not offered
        caption = page.locator("#similar-gallery .caption-label").first
        expect(caption).to_contain_text(FOX)
        score = int(caption.inner_text().split("%")[0])
        assert 70 <= score < 100
        wait_until(Path(str(gate) + ".reached").exists, "the generation to reach the gate", timeout_s=30)
        expect(page.locator("#status")).not_to_contain_text("miss")  # still being made

        thumbnails.first.click()  # use it: the viewer shows the stored image at once
        expect(page.locator("#status")).to_contain_text("similar hit")
        expect(page.locator(VIEWER_IMAGE)).to_have_attribute("src", _has(ours["key"]))
        expect(page.locator("#history .thumbnail-item")).to_have_count(1)
        gate.unlink()  # the interrupted generation ends after its step, storing nothing
        page.wait_for_function("n => window.zimage.runs > n", arg=runs, timeout=TIMEOUT_MS)
        expect(page.locator("#status")).to_contain_text("similar hit")  # not "Interrupted"
        expect(page.locator(VIEWER_IMAGE)).to_have_attribute("src", _has(ours["key"]))
        page.context.close()

    after = server.client.get("/api/cache/stats").json()
    assert after["generations"] == generations + 1  # started, interrupted
    assert after["near_repeats"]["used"] == near["used"] + 1
    assert after["near_repeats"]["prompts"] == near["prompts"]  # nothing of it was stored
    metrics = server.client.get("/metrics").text
    assert f"zimage_similar_used_total {near['used'] + 1}.0" in metrics
    assert f"**used** {near['used'] + 1}" in latency_text("en", after)  # the Stats tab's line


def _has(key: str) -> re.Pattern[str]:
    return re.compile(re.escape(key))
