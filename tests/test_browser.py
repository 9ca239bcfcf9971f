"""The UI in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect

from bench.browsers import TIMEOUT_MS, chromium, generate, open_page, small
from tests.conftest import Server

# docs.test resolves to this machine: a page on a non-local host name, where Swagger
# UI would otherwise call out (its validator badge skips only localhost).
DOCS_HOST = "docs.test"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium(f"--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1") as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    pg = open_page(browser, server.url, height=1000, locale="en-US")
    yield pg
    pg.context.close()


def test_generate_then_hit_in_the_browser(page: Page) -> None:
    page.locator("#seed input").fill("77")
    page.get_by_label("Resolution").click()
    page.get_by_role("option", name="1152x896").click()
    # The preset fills width and height through a server round trip; wait for it.
    expect(page.locator("#width input")).to_have_value("1152")
    expect(page.locator("#height input")).to_have_value("896")
    expect(page.locator("#seed input")).to_have_value("77")
    first = generate(page, "a browser lighthouse", "miss")
    assert "seed 77" in first
    expect(page.locator("#result img").first).to_be_visible()
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("memory hit", timeout=TIMEOUT_MS)
    img = page.locator("#result img").first
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [1152, 896]


def test_downloaded_png_carries_its_parameters(page: Page) -> None:
    small(page)
    page.locator("#seed input").fill("5")
    page.locator("#batch input[type=number]").fill("2")
    page.locator("#batch input[type=number]").press("Enter")
    generate(page, "a downloadable lighthouse", "seeds 5, 6")
    expect(page.locator("#result .thumbnail-small img")).to_have_count(2)  # under the large preview
    src = page.locator("#result .thumbnail-small img").first.get_attribute("src")
    png = page.request.get(src).body()
    params = json.loads(Image.open(io.BytesIO(png)).info["zimage"])
    assert params["prompt"] == "a downloadable lighthouse"
    assert params["seed"] in (5, 6)


def test_progress_advances_with_each_step(page: Page) -> None:
    small(page, 512)
    page.locator("button", has_text="Advanced").click()
    page.locator("#steps input[type=number]").fill("24")
    page.locator("#steps input[type=number]").press("Enter")
    page.locator("#prompt textarea").fill("a slow browser lighthouse")
    before = page.locator("#status").inner_text()  # a previous run's status, until this one ends
    # Every step count the page shows, as it draws it: polling from here could miss
    # the short run's updates on a busy machine.
    page.evaluate(
        """() => {
            window.stepsSeen = [];
            const result = document.querySelector("#result");
            new MutationObserver(() => {
                const shown = result.innerText.match(/(\\d+)\\/24 steps/);
                if (shown) window.stepsSeen.push(Number(shown[1]));
            }).observe(result, {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.locator("#generate").click()
    page.wait_for_function(
        """before => {
            const status = document.querySelector("#status").innerText;
            return status !== before && status.includes("miss");
        }""",
        arg=before,
        timeout=TIMEOUT_MS,
    )
    seen: list[int] = page.evaluate("window.stepsSeen")
    assert len(set(seen)) >= 3, seen
    assert seen == sorted(seen)


def test_history_restores_parameters_and_bypass_says_so(page: Page) -> None:
    small(page)
    page.locator("#seed input").fill("1234")
    generate(page, "a remembered lighthouse", "seed 1234")
    page.locator("#seed input").fill("9")
    page.locator("#bypass input").check()
    generate(page, "something else entirely", "bypass")
    history = page.locator("#history button img, #history img")
    expect(history).to_have_count(2)
    history.nth(1).click()
    expect(page.locator("#prompt textarea")).to_have_value("a remembered lighthouse")
    expect(page.locator("#seed input")).to_have_value("1234")


def test_stats_tab_shows_tiers_and_latency(page: Page) -> None:
    small(page)
    generate(page, "a counted lighthouse", "seed")
    page.get_by_role("tab", name="Stats").click()
    expect(page.locator("#tiers")).to_contain_text("memory")
    expect(page.locator("#tiers")).to_contain_text("disk")
    expect(page.locator("#latency")).to_contain_text("Generation latency")
    expect(page.locator("#latency")).to_contain_text("p95")


def test_chinese_browser_sees_chinese_labels(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="zh-CN")
    expect(page.locator("#generate")).to_have_text("生成")
    expect(page.get_by_text("提示词", exact=True)).to_be_visible()
    expect(page.locator("#demo-banner")).to_contain_text("演示模型")
    expect(page.get_by_role("tab", name="统计")).to_be_visible()
    page.context.close()


def test_api_docs_render_offline_from_local_assets(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    outside: list[str] = []
    base = f"http://{DOCS_HOST}:{server.port}"

    def local_only(route: Route) -> None:
        # Anything not served by our server would be a CDN: refuse it, and remember it.
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    page = context.new_page()
    page.goto(f"{base}/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(".opblock-summary-path", has_text="/v1/images/generations")).to_be_visible()
    assert page.locator(".opblock").count() >= 17
    assert outside == []
    context.close()


def test_a_gpu_box_whose_torch_cannot_use_cuda_says_so_instead_of_serving_noise(
    browser: Browser, tmp_path: Path
) -> None:
    sign = tmp_path / "proc-driver-nvidia-version"  # stands for /proc/driver/nvidia/version
    sign.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
    env = {"ZIMAGE_MODEL": "auto", "ZIMAGE_FAULT_NVIDIA_DRIVER": str(sign)}
    srv = Server(tmp_path / "cache", env=env, faults=True)
    try:
        srv.wait_model("failed")
        ready = srv.client.get("/ready")
        assert ready.status_code == 503 and "is a CPU-only build" in ready.json()["reason"]
        run = srv.client.get("/run", params={"prompt": "a red fox", "width": 256, "height": 256})
        assert run.status_code == 503 and "CudaUnavailable" in run.json()["detail"]
        page = open_page(browser, srv.url, locale="en-US")
        state = page.locator("#model-state")
        expect(state).to_contain_text("The model failed to load", timeout=TIMEOUT_MS)
        expect(state).to_contain_text("install a CUDA build of torch, or pass --model tiny")
        expect(page.locator("#demo-banner")).to_be_hidden()  # it is no demo: it is broken
        page.context.close()
    finally:
        srv.stop()
