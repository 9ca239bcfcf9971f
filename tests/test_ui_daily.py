"""The UI as someone who keeps it open all day uses it, in a real headless Chromium
(Debian's): a new seed on each press (and keeping one), the keyboard that never
loses a character, and field notes that go once their field is fixed."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from bench.browsers import chromium, generate, open_page, small
from tests.conftest import Server

VIEWER_IMAGE = "#result .media-button img"  # the main viewer's large image
SEED = re.compile(r"seed (\d+)$")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def drawn_seed(status: str) -> int:
    match = SEED.search(status)
    assert match, status
    return int(match[1])


# -- the seed ----------------------------------------------------------------------------------


def test_each_press_draws_a_new_seed_and_reuse_keeps_the_drawn_one(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US")
    small(page, 64)
    expect(page.locator("#seed input")).to_have_value("-1")  # the default: new each time
    first = drawn_seed(generate(page, "a lighthouse, again and again", "miss"))
    first_src = page.locator(VIEWER_IMAGE).get_attribute("src")
    second = drawn_seed(generate(page, "a lighthouse, again and again", "miss"))  # not a hit
    assert first != second
    assert page.locator(VIEWER_IMAGE).get_attribute("src") != first_src
    expect(page.locator("#seed input")).to_have_value("-1")  # still new each time

    # The drawn seed is shown on the button that puts it back, and then kept.
    reuse = page.locator("#reuse-seed")
    expect(reuse).to_have_text(f"Reuse {second}")
    reuse.click()
    expect(page.locator("#seed input")).to_have_value(str(second))
    for _ in range(2):
        status = generate(page, "a lighthouse, again and again", "memory hit")
        assert drawn_seed(status) == second

    # Random: a new seed on each press again.
    page.locator("#random-seed").click()
    expect(page.locator("#seed input")).to_have_value("-1")
    third = drawn_seed(generate(page, "a lighthouse, again and again", "miss"))
    assert third not in (first, second)
    page.context.close()


# -- the keyboard --------------------------------------------------------------------------------

ACTIVE = "() => { const a = document.activeElement; return a ? a.closest('#prompt') !== null && a.tagName : null; }"


@pytest.mark.parametrize("keys", ["Control+Enter", "Shift+Enter"])
def test_typing_on_while_a_generation_runs_loses_no_character(
    browser: Browser, server: Server, keys: str
) -> None:
    page = open_page(browser, server.url, locale="en-US")  # a fresh page: its first result
    small(page, 128)
    prompt = page.locator("#prompt textarea")
    prompt.click()
    page.keyboard.type("a harbour at dusk")
    runs = page.evaluate("window.zimage.runs")
    page.keyboard.press(keys)
    assert page.evaluate(ACTIVE) == "TEXTAREA"  # the keyboard stayed in the prompt
    typed = ""
    # Type on, one key at a time, until the result has arrived, and a little after.
    while page.evaluate("n => window.zimage.runs > n", runs) is False or len(typed) < 72:
        assert len(typed) < 2000, "the generation never finished"
        key = "abcdefghijklmnopqrstuvwxyz "[len(typed) % 27]
        page.keyboard.type(key, delay=20)
        typed += key
    expect(page.locator("#status")).to_contain_text("miss")
    suffix = "\n" if keys == "Shift+Enter" else ""  # (Shift+Enter both submits and breaks the line)
    assert prompt.input_value() in (f"a harbour at dusk{typed}", f"a harbour at dusk{suffix}{typed}")
    assert page.evaluate(ACTIVE) == "TEXTAREA"
    page.context.close()
