"""Gradio's Settings -> Language, in a real headless Chromium (Debian's): switching
to Chinese makes every text of ours Chinese (Gradio's labels, our script's words
and what the server writes), and a reload keeps it (static/lang.js)."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from bench.browsers import chromium, generate, open_page, small
from tests.conftest import Server
from tests.test_ui_browser import VISIBLE_TEXT, english_words

PROMPTS = ["一只提灯的狐狸"]
# Gradio's running-event timers ("0.4s") are numbers, not words: read once none runs.
NO_TIMER = """() => ![...document.querySelectorAll('[data-testid="status-tracker"]:not(.hide)')]
  .some((t) => /\\d\\s*s/.test(t.innerText))"""


def english_seen(page: Page) -> set[str]:
    page.wait_for_function(NO_TIMER)
    return english_words(page.evaluate(VISIBLE_TEXT), PROMPTS)


def switch_language(page: Page, name: str) -> None:
    """Gradio's footer Settings -> Language -> `name`, and the page loaded again."""
    page.locator("footer").get_by_text("Settings").click()
    page.get_by_role("dialog", name="Settings").get_by_role("combobox").click()
    with page.expect_navigation():
        page.get_by_role("option", name=name, exact=True).click()
    page.locator("#generate").wait_for()


def chinese_throughout(page: Page) -> None:
    """The page's texts, idle and after a generation, have no English but names."""
    expect(page.locator("#generate")).to_have_text("生成")
    expect(page.locator("#prompt-count")).to_contain_text("/")
    assert english_seen(page) == set()
    small(page, 64)
    generate(page, PROMPTS[0], "种子")  # what the server writes
    assert page.get_by_role("tab").all_inner_texts()[:3] == ["创作", "编辑图像", "统计"]
    page.locator("#prompt textarea").fill("")
    page.locator("#prompt textarea").press("Control+Enter")
    expect(page.locator("#prompt-note")).to_contain_text("请先输入提示词")
    assert english_seen(page) == set()


def test_the_language_chosen_in_settings_is_the_whole_pages_and_survives_a_reload(server: Server) -> None:
    with chromium() as browser:
        page = open_page(browser, server.url, locale="en-US")
        expect(page.locator("#generate")).to_have_text("Generate")
        switch_language(page, "简体中文")
        chinese_throughout(page)
        page.reload()
        page.locator("#generate").wait_for()
        chinese_throughout(page)
        page.context.close()
