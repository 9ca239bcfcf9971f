"""The image tab's ControlNet and LoRA parts (web/ui_edit.py, static/edit.js) in a real
headless Chromium, on a server with `--controlnet tiny`: the chosen image sent as a
control image is a miss, the same again a hit, another control scale a miss (a new
image); an edit with the demo LoRA a miss, another LoRA scale a miss (a new image)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from playwright.sync_api import expect

from bench.browsers import TIMEOUT_MS, chromium
from tests.conftest import Server
from tests.test_image_input import picture
from tests.test_ui_a11y import serious
from tests.test_ui_edit import edit_tab_with, shown


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("ui-control") / "cache", "--controlnet", "tiny").wait_ready()
    yield srv
    srv.stop()


def test_the_image_tab_sends_a_control_image_and_a_lora_each_scale_a_miss(
    controlled: Server,
) -> None:
    edges = picture(43)  # 64 x 64
    with chromium() as browser:
        page = edit_tab_with(browser, controlled.url, edges, "edges.png")
        expect(page.locator("#edit-mask")).to_be_visible()
        use = page.get_by_label("Use the image as a control image")
        expect(use).to_be_enabled()
        use.check()
        expect(page.get_by_label("Strength (how much is redrawn)")).to_be_disabled()
        page.get_by_label("Control kind").select_option("depth")
        page.locator("#edit-prompt").fill("a lantern along the edges")

        def edit(expect_status: str) -> str:
            runs = page.evaluate("window.zimageEdit.runs")
            page.get_by_role("button", name="Edit", exact=True).click()
            page.wait_for_function("n => window.zimageEdit.runs > n", arg=runs, timeout=TIMEOUT_MS)
            expect(page.locator("#edit-status")).to_contain_text(expect_status)
            return page.locator("#edit-result").get_attribute("src") or ""

        first = edit("control · miss · seed 42")
        assert edit("control · memory · seed 42") == first
        page.get_by_label("Control scale (how closely it is followed)").press("ArrowRight")  # 0.75 -> 0.8
        expect(page.locator("#edit-control-scale-value")).to_have_text("0.8")
        stronger = edit("control · miss · seed 42")
        assert stronger != first
        assert shown(first).shape == edges.shape
        assert not np.array_equal(shown(first), shown(stronger))

        # Back to img2img, with the demo LoRA: each LoRA scale is its own edit.
        use.uncheck()
        expect(page.get_by_label("Strength (how much is redrawn)")).to_be_enabled()
        page.get_by_label("LoRA", exact=True).select_option("tiny-demo")
        with_lora = edit("img2img · miss · seed 42")
        page.get_by_label("LoRA scale").press("ArrowLeft")  # 1 -> 0.95
        expect(page.locator("#edit-lora-scale-value")).to_have_text("0.95")
        weaker = edit("img2img · miss · seed 42")
        assert not np.array_equal(shown(with_lora), shown(weaker))
        assert serious(page) == []
        page.context.close()
