"""The UI as someone who keeps it open all day uses it, in a real headless Chromium
(Debian's): a new seed on each press (and keeping one), the keyboard that never
loses a character, and field notes that go once their field is fixed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import Browser, expect

from bench.browsers import TIMEOUT_MS, chromium, generate, open_page, small
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


IN_PROMPT = "() => document.activeElement?.closest('#prompt') !== null"


def test_only_the_person_moves_the_keyboard_off_the_prompt(browser: Browser, server: Server) -> None:
    """What Gradio does on its own (blur the field, redraw it) puts the keyboard back in
    the prompt, the caret where it was; a click elsewhere does not. (Its gallery taking
    the focus is the test above.)"""
    page = open_page(browser, server.url, locale="en-US")
    prompt = page.locator("#prompt textarea")
    prompt.click()
    page.keyboard.type("a quiet harbour")
    page.wait_for_timeout(1_100)  # (past the click: what follows is no move of the person's)
    redraw = "() => { const t = document.querySelector('#prompt textarea'); const c = t.cloneNode(); c.value = t.value; t.replaceWith(c); }"
    for moves, typed in (
        ("() => document.activeElement.blur()", " at"),
        (redraw, " dusk"),
    ):
        page.evaluate(moves)
        page.wait_for_function(IN_PROMPT, timeout=2_000)
        page.keyboard.type(typed)
    assert prompt.input_value() == "a quiet harbour at dusk"
    page.locator("#random-seed").click()  # the person's own move is kept
    page.wait_for_timeout(100)
    assert page.evaluate(IN_PROMPT) is False
    page.context.close()


# -- the history -----------------------------------------------------------------------------


def test_the_history_panel_lists_searches_restores_deletes_and_clears(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, locale="en-US")  # 1280x800
    heading, search = page.locator("#history-heading"), page.locator("#history-search").get_by_role("textbox")
    expect(heading).to_contain_text("the last 48 images")  # the cap, said
    for shown in (heading, search):  # above the fold, not 650 px below it
        box = shown.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 800, box
    small(page, 64)
    prompts = ["a red fox in the snow", "a blue whale", "a red barn at dawn"]
    for seed, prompt in enumerate(prompts, start=500):
        page.locator("#seed input").fill(str(seed))
        generate(page, prompt, f"seed {seed}")
    captions = page.locator("#history .caption-label")
    # Each its prompt, seed and time, newest first; its caption is its name.
    expect(captions).to_have_text(
        [
            re.compile(rf"^{p} · seed {s} · \d\d:\d\d$")
            for s, p in reversed(list(enumerate(prompts, start=500)))
        ]
    )
    thumbs = page.locator("#history .thumbnail-item")
    expect(thumbs.first).to_have_attribute("aria-label", captions.first.inner_text())

    search.fill("RED")  # any case
    expect(captions).to_have_text([re.compile("^a red barn"), re.compile("^a red fox")])
    thumbs.nth(1).click()  # the fox: its settings back in the form
    expect(page.locator("#prompt textarea")).to_have_value("a red fox in the snow")
    expect(page.locator("#seed input")).to_have_value("500")
    page.locator("#history-delete").click()
    expect(captions).to_have_text([re.compile("^a red barn")])
    search.fill("")
    expect(captions).to_have_text([re.compile("^a red barn"), re.compile("^a blue whale")])

    page.reload()  # what was deleted stays deleted
    expect(captions).to_have_text([re.compile("^a red barn"), re.compile("^a blue whale")])
    page.once("dialog", lambda dialog: dialog.dismiss())  # "Delete all ...?" No: nothing goes
    page.locator("#history-clear").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#history-clear").click()
    expect(captions).to_have_count(0)
    page.reload()
    page.locator("#history-heading").wait_for()
    expect(page.locator("#history .thumbnail-item")).to_have_count(0)
    page.context.close()


# -- small things, and the phone --------------------------------------------------------------


def test_use_these_settings_waits_for_an_image(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US")
    use = page.locator("#use-settings")
    expect(use).to_be_disabled()  # nothing to take settings from yet
    small(page, 64)
    page.locator("#seed input").fill("31")
    generate(page, "a lighthouse whose settings come back", "seed 31")
    expect(use).to_be_enabled()
    page.locator("#prompt textarea").fill("something else")
    use.click()
    expect(page.locator("#prompt textarea")).to_have_value("a lighthouse whose settings come back")
    page.context.close()


def test_on_a_phone_sizes_share_a_row_the_hint_goes_and_progress_is_in_view(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, 390, 844, locale="en-US", is_mobile=True, has_touch=True)
    width, height = page.locator("#width input").bounding_box(), page.locator("#height input").bounding_box()
    assert width is not None and height is not None and width["y"] == height["y"]  # one row
    expect(page.locator("#prompt .info-text")).to_be_hidden()  # no Ctrl+Enter on a touch screen
    small(page, 512)  # (large enough to be watched for a moment)
    page.locator("#prompt textarea").fill("a lighthouse watched from a phone")
    runs = page.evaluate("window.zimage.runs")
    page.locator("#generate").click()
    # While it runs (before the page has its result), the images and their progress are in view.
    # (top > -1: scrolled to the top of the viewport, it may sit a fraction of a pixel above)
    page.wait_for_function(
        """n => { const r = document.querySelector('#result').getBoundingClientRect();
                  return window.zimage.runs === n && r.top > -1 && r.top < innerHeight / 2; }""",
        arg=runs,
        timeout=TIMEOUT_MS,
    )
    page.wait_for_function("n => window.zimage.runs > n", arg=runs, timeout=TIMEOUT_MS)
    page.context.close()


# -- a pasted 64 KB --------------------------------------------------------------------------


def test_a_pasted_64_kb_prompt_is_refused_in_the_page_in_its_language_and_the_image_stays(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, locale="zh-CN")
    small(page, 64)
    page.locator("#seed input").fill("64")
    generate(page, "一座灯塔", "种子 64")
    image = page.locator(VIEWER_IMAGE).get_attribute("src")
    sent: list[int] = []
    page.on("request", lambda r: sent.append(len(r.post_data_buffer or b"")) if r.method == "POST" else None)
    prompt = page.locator("#prompt textarea")
    prompt.fill("灯塔" * 35_000)  # 70,000 characters, 210 KB of UTF-8
    for press in (lambda: prompt.press("Control+Enter"), lambda: page.locator("#generate").click()):
        press()
        expect(page.locator("#prompt-note")).to_have_text("提示词共 70000 个字符，请缩短到 2000 个以内。")
        expect(prompt).to_have_attribute("aria-invalid", "true")
    assert max(sent, default=0) < 64 * 1024  # the prompt never went out
    assert page.locator(VIEWER_IMAGE).get_attribute("src") == image  # the image stays
    assert page.locator(".toast-body").count() == 0  # and Gradio said nothing in English

    # The same for the negative prompt (Advanced, closed: opened to show its note).
    prompt.fill("一座灯塔")
    expect(page.locator("#negative textarea")).to_be_hidden()
    page.locator("#advanced .label-wrap").click()
    page.locator("#negative textarea").fill("雾" * 70_000)
    page.locator("#advanced .label-wrap").click()  # closed again
    page.locator("#generate").click()
    expect(page.locator("#negative-prompt-note")).to_have_text(
        "反向提示词共 70000 个字符，请缩短到 2000 个以内。"
    )
    expect(page.locator("#negative-prompt-note")).to_be_visible()
    expect(page.locator("#prompt-note")).to_have_text("")  # the prompt's own is fine now
    assert max(sent, default=0) < 64 * 1024
    assert page.locator(VIEWER_IMAGE).get_attribute("src") == image
    assert page.locator(".toast-body").count() == 0
    page.context.close()


# -- PNG Info ------------------------------------------------------------------------------------

A1111_TEXT = (
    "a castle on a hill, 城堡\nNegative prompt: lowres\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
    "Model hash: 0123456789, Model: sd15"
)


def test_png_info_reads_our_png_and_an_a1111_one_into_the_form_without_uploading_them(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    query = {"prompt": "a windmill by a canal", "negative_prompt": "fog", "guidance_scale": 2, "seed": 4242}
    made = server.client.get("/run", params={**query, "width": 64, "height": 64, "steps": 2}).json()
    ours = tmp_path / "ours.png"
    ours.write_bytes(server.client.get(made["image_url"]).content)
    theirs, plain = tmp_path / "a1111.png", tmp_path / "plain.png"
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", A1111_TEXT)  # A1111 writes iTXt for non-Latin-1 text
    Image.new("RGB", (8, 8)).save(theirs, pnginfo=info)
    Image.new("RGB", (8, 8)).save(plain)

    page = open_page(browser, server.url, locale="en-US")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method == "POST" else None)
    page.locator("#png-info .label-wrap").click()
    page.locator("#advanced .label-wrap").click()  # where the negative prompt and steps are
    files = page.locator("#png-info-file")
    files.set_input_files(ours)
    expect(page.locator("#notice")).to_have_text("Settings read from the image.")
    expect(page.locator("#prompt textarea")).to_have_value("a windmill by a canal")
    expect(page.locator("#negative textarea")).to_have_value("fog")
    expect(page.locator("#seed input")).to_have_value("4242")
    expect(page.locator("#width input")).to_have_value("64")
    expect(page.locator("#guidance input[type=number]")).to_have_value("2")

    files.set_input_files(theirs)
    expect(page.locator("#prompt textarea")).to_have_value("a castle on a hill, 城堡")
    expect(page.locator("#negative textarea")).to_have_value("lowres")
    expect(page.locator("#seed input")).to_have_value("1234")
    expect(page.locator("#height input")).to_have_value("768")
    expect(page.locator("#steps input[type=number]")).to_have_value("30")
    expect(page.locator("#guidance input[type=number]")).to_have_value("6")  # A1111's CFG 7

    files.set_input_files(plain)
    expect(page.locator("#notice")).to_have_text("This file holds no generation parameters.")
    expect(page.locator("#prompt textarea")).to_have_value("a castle on a hill, 城堡")  # kept
    assert not [url for url in sent if "/upload" in url]  # the files never left the browser
    page.context.close()
