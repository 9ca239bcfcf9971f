"""The UI for everyone, in a real headless Chromium (Debian's): axe-core (the
axe.min.js that axe-playwright-python ships) finds no serious or critical problem in
the light or the dark theme, on either tab, before and after a generation; field
notes are announced, name their field, go once it is changed, and move nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from bench.browsers import chromium, generate, open_page, small
from tests.conftest import Server

# axe's default rules (WCAG A and AA, and best practices), and one it keeps
# experimental: a control's name must contain the text it shows.
AXE_OPTIONS = {"rules": {"label-content-name-mismatch": {"enabled": True}}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def serious(page: Page) -> list[str]:
    """axe's serious and critical violations on the page as it is: 'rule: nodes'."""
    found = Axe().run(page, options=AXE_OPTIONS).response["violations"]
    return [
        f"{v['id']}: {[n['target'] for n in v['nodes']]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_on_both_tabs_before_and_after_a_generation(
    browser: Browser, server: Server, scheme: str
) -> None:
    page = open_page(browser, server.url, color_scheme=scheme, locale="en-US")
    found = {"create": serious(page)}
    page.get_by_role("tab", name="Stats").click()
    expect(page.locator("#latency")).to_contain_text("latency")
    found["stats"] = serious(page)

    page.get_by_role("tab", name="Create").click()
    small(page, 64)
    page.locator("#seed input").fill("7")
    generate(page, f"an accessible lighthouse, {scheme}", "seed 7")
    generate(page, f"a second accessible lighthouse, {scheme}", "seed 7")  # two in the history
    found["create, after"] = serious(page)
    page.get_by_role("tab", name="Stats").click()
    expect(page.locator("#latency")).to_contain_text("latency")
    found["stats, after"] = serious(page)
    assert found == {"create": [], "stats": [], "create, after": [], "stats, after": []}
    page.context.close()


def test_a_slider_shows_where_the_keyboard_is(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US")
    slider = page.locator("#batch input[type=range]")
    page.keyboard.press("Shift")  # the keyboard is in use: focus shows where it is
    slider.focus()
    expect(slider).to_be_focused()
    outline = slider.evaluate(
        "e => [getComputedStyle(e).outlineStyle, parseFloat(getComputedStyle(e).outlineWidth)]"
    )
    assert outline[0] != "none" and outline[1] >= 2, outline
    page.context.close()


# -- field notes --------------------------------------------------------------------------------

ATTRS = "(e) => [e.getAttribute('aria-describedby'), e.getAttribute('aria-invalid')]"


def test_a_note_is_announced_names_its_field_goes_when_fixed_and_moves_nothing(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, locale="en-US")
    prompt, note = page.locator("#prompt textarea"), page.locator("#prompt-note")
    for region in ("#status", "#notice", "#queue-note", "#prompt-note", "#width-note", "#seed-note"):
        assert page.locator(region).get_attribute("aria-live") == "polite", region
    generate_at = page.locator("#generate").bounding_box()

    prompt.press("Control+Enter")  # no prompt
    expect(note).to_have_text("Write a prompt first.")
    expect(prompt).to_have_attribute("aria-invalid", "true")
    assert prompt.evaluate(ATTRS) == ["prompt-note", "true"]
    assert page.locator("#generate").bounding_box() == generate_at  # the note moved nothing

    prompt.press_sequentially("a")  # the note goes as soon as there is a prompt
    expect(note).to_have_text("")
    expect(prompt).not_to_have_attribute("aria-invalid", "true")
    assert page.locator("#generate").bounding_box() == generate_at

    # A size's note says what it did on one line, across the row, not in the narrow box.
    width = page.locator("#width input")
    width.fill("1000")
    width.press("Tab")
    size_note = page.locator("#width-note")
    expect(size_note).to_have_text("Rounded to 1008: sizes are multiples of 16.")
    line = size_note.evaluate("e => parseFloat(getComputedStyle(e.querySelector('p')).lineHeight)")
    assert size_note.locator("p").bounding_box()["height"] < 1.5 * line  # type: ignore[index]
    assert width.evaluate(ATTRS) == ["width-note", None]  # a note, not an error
    width.press_sequentially("0")  # typed again: the note goes
    expect(size_note).to_have_text("")
    page.context.close()
