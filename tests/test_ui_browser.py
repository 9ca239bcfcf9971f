"""The UI as a person uses it, in a real headless Chromium (Debian's): the layout at
desktop and phone sizes, the keyboard, dark mode, the page in Chinese, errors that
keep the page, the queue (its place, Cancel, a busy server), the statistics, and
the habits of A1111/Fooocus users. One browser for the module; the session's
server, and one more with a gated engine for the queue."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from bench.browsers import TIMEOUT_MS, chromium, generate, open_page, small
from bench.procs import wait_until
from tests.conftest import Server, wait_generating
from web.ui_text import EXAMPLES

VIEWER_IMAGE = "#result .media-button img"  # the main viewer's large image


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, the gated server's engine holds at its first step."""
    return tmp_path_factory.mktemp("gate") / "hold"


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, gate: Path) -> Iterator[Server]:
    """A server whose engine waits at a gate, with room for one job in its queue. It
    starts with the gate closed, so its warm-up holds until a test opens it."""
    gate.touch()
    srv = Server(
        tmp_path_factory.mktemp("gated") / "cache",
        "--max-queue",
        "1",
        env={"ZIMAGE_FAULT_GATE_GENERATION": str(gate)},
        faults=True,
    )
    yield srv
    gate.unlink(missing_ok=True)
    srv.stop()


def ready(server: Server, gate: Path) -> Server:
    gate.unlink(missing_ok=True)
    return server.wait_ready()


def natural_width(page: Page, selector: str) -> int:
    """The width of the image file an <img> shows, once it has loaded."""
    return page.locator(selector).evaluate(
        "i => new Promise(r => i.complete && i.naturalWidth ? r(i.naturalWidth) : (i.onload = () => r(i.naturalWidth)))"
    )


def within_viewport(page: Page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    return (
        box["y"] >= 0
        and box["y"] + box["height"] <= size["height"]
        and box["x"] + box["width"] <= size["width"]
    )


# -- layout and keyboard ---------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1440, 900), (1280, 800)])
def test_type_press_ctrl_enter_and_see_the_image_without_scrolling(
    browser: Browser, server: Server, width: int, height: int
) -> None:
    page = open_page(browser, server.url, width, height, locale="en-US")
    assert within_viewport(page, "#prompt textarea") and within_viewport(page, "#generate")
    expect(page.locator("#prompt")).to_contain_text("Ctrl+Enter")  # the shortcut says so
    small(page, 256)
    page.locator("#prompt textarea").click()
    page.keyboard.type(f"a lighthouse at {width}x{height}")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_contain_text("miss", timeout=TIMEOUT_MS)
    image = page.locator(VIEWER_IMAGE)  # the new image, large
    expect(image).to_be_visible()
    assert natural_width(page, VIEWER_IMAGE) == 256
    assert within_viewport(page, VIEWER_IMAGE) and within_viewport(page, "#status")
    assert page.evaluate("window.scrollY") == 0
    page.context.close()


def test_on_a_phone_the_new_image_is_brought_into_view(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, 390, 844, locale="en-US", is_mobile=True, has_touch=True)
    small(page)
    generate(page, "a lighthouse on a phone", "miss")
    expect(page.locator(VIEWER_IMAGE)).to_be_in_viewport(ratio=0.9)
    page.context.close()


# -- dark mode -----------------------------------------------------------------------------

# WCAG's contrast ratio of an element's text to what is behind it (the first
# ancestor with a background colour).
CONTRAST = """(el) => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  let bg = el, color = rgb(getComputedStyle(el).color);
  while (bg && (getComputedStyle(bg).backgroundColor === "rgba(0, 0, 0, 0)")) bg = bg.parentElement;
  const back = rgb(bg ? getComputedStyle(bg).backgroundColor : "rgb(255, 255, 255)");
  const [hi, lo] = [lum(color), lum(back)].sort((a, b) => b - a);
  return (hi + 0.05) / (lo + 0.05);
}"""


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_banners_and_notes_keep_their_contrast_in_both_themes(
    browser: Browser, server: Server, scheme: str
) -> None:
    page = open_page(browser, server.url, color_scheme=scheme, locale="en-US")
    assert page.evaluate("document.body.classList.contains('dark')") == (scheme == "dark")
    page.locator("#prompt textarea").press("Control+Enter")  # no prompt: a note beside it
    expect(page.locator("#prompt-note")).to_contain_text("Write a prompt first.")
    for selector in ("#demo-banner p", "#demo-banner strong", "#prompt-note p", "#prompt label span"):
        ratio = page.locator(selector).first.evaluate(CONTRAST)
        assert ratio >= 4.5, f"{selector}: contrast {ratio:.2f} in {scheme} mode"
    page.context.close()


def test_the_warming_banner_is_readable_in_the_dark_and_goes_once_ready(
    browser: Browser, gated: Server, gate: Path
) -> None:
    gated.wait_model("warming")  # its warm-up holds at the gate
    page = open_page(browser, gated.url, color_scheme="dark", locale="en-US")
    banner = page.locator("#model-state")
    expect(banner).to_contain_text("Model warming up")
    for selector in ("#model-state p", "#model-state strong"):
        ratio = page.locator(selector).first.evaluate(CONTRAST)
        assert ratio >= 4.5, f"{selector}: contrast {ratio:.2f}"
    ready(gated, gate)
    expect(banner).to_be_hidden(timeout=TIMEOUT_MS)
    page.context.close()


# -- the page in Chinese --------------------------------------------------------------------

# What the visible page says: its text, and the values and placeholders of the fields
# shown, but not the prompt fields (prompts are the user's words) nor the A1111
# parameters box (a file format tools read, English by convention).
# (A Gradio status tracker fading out, class "hide", is transparent but still in
# innerText: its timer, "0.3s", is not on the screen.)
VISIBLE_TEXT = """() => {
  let body = document.body.innerText;
  for (const tracker of document.querySelectorAll('[data-testid="status-tracker"].hide')) {
    const timer = tracker.innerText.trim();
    if (timer) body = body.replace(timer, "");
  }
  const seen = [body];
  for (const el of document.querySelectorAll("input, textarea")) {
    if (!el.offsetParent || ["checkbox", "radio", "range", "hidden"].includes(el.type)) continue;
    if (el.closest("#prompt, #negative, #parameters")) continue;
    seen.push(el.value, el.placeholder);
  }
  return seen.join("\\n");
}"""
# English that may stay: names (of the model, of Gradio, Redis, CUDA, the A1111
# format), keys (Ctrl, Shift, Enter), units and statistics' names.
ALLOWED = {"Z", "Image", "Turbo", "CUDA", "GPU", "API", "Gradio", "Redis", "A1111"}
ALLOWED |= {"Ctrl", "Shift", "Enter", "MiB", "p50", "p95", "PNG"}  # (PNG Info: a format's name)
ALLOWED |= {"LoRA"}  # (the LoRA picker: a kind of file, named so in Chinese too)


def english_words(text: str, prompts: list[str]) -> set[str]:
    for prompt in prompts:
        text = text.replace(prompt, " ")
    for example in (e[0] for e in EXAMPLES):  # shown cut short: "A red fox ... 35mm ..."
        text = re.sub(r"^" + re.escape(example[:30]) + r".*$", " ", text, flags=re.M)
    text = re.sub(r"\b\d+x\d+\b", " ", text)  # sizes
    return set(re.findall(r"[A-Za-z][A-Za-z0-9]*", text)) - ALLOWED


def test_the_chinese_page_says_nothing_in_english_but_prompts_and_numbers(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, locale="zh-CN")
    prompts = ["一只提灯的狐狸", "lantern fox"]
    page.locator("#advanced").get_by_role("button").first.click()  # the advanced settings too
    expect(page.locator("#normalization")).to_be_visible()
    found = {"idle": english_words(page.evaluate(VISIBLE_TEXT), prompts)}

    # After a generation: a hit and a miss in one batch, captions and status line.
    small(page)
    page.locator("#seed input").fill("910")
    generate(page, "一只提灯的狐狸 lantern fox", "种子")
    page.locator("#batch input[type=number]").fill("2")
    page.locator("#batch input[type=number]").press("Enter")
    generate(page, "一只提灯的狐狸 lantern fox", "内存 + 未命中")
    found["generated"] = english_words(page.evaluate(VISIBLE_TEXT), prompts)

    # After an error: no prompt, a size out of range.
    page.locator("#prompt textarea").fill("")
    page.locator("#width input").fill("5000")
    page.locator("#prompt textarea").press("Control+Enter")
    expect(page.locator("#prompt-note")).to_contain_text("请先输入提示词")
    expect(page.locator("#width-note")).to_contain_text("2048")
    found["error"] = english_words(page.evaluate(VISIBLE_TEXT), prompts)

    page.get_by_role("tab", name="统计").click()
    expect(page.locator("#latency")).to_contain_text("命中延迟")
    expect(page.locator("#requests-plot svg")).to_contain_text("每 10 秒请求数")
    found["stats"] = english_words(page.evaluate(VISIBLE_TEXT), prompts)
    assert found == {"idle": set(), "generated": set(), "error": set(), "stats": set()}

    # The tab and the button are not both called 生成.
    assert page.get_by_role("tab").all_inner_texts()[:3] == ["创作", "编辑图像", "统计"]
    page.context.close()


# -- errors keep the page --------------------------------------------------------------------


def test_a_mistake_is_said_beside_its_field_and_the_page_keeps_its_images(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, locale="en-US")
    small(page)
    generate(page, "a lighthouse worth keeping", "miss")
    image = page.locator(VIEWER_IMAGE).get_attribute("src")
    status = page.locator("#status").inner_text()
    expect(page.locator("#history .thumbnail-item")).to_have_count(1)

    # Sizes snap to multiples of 16, or to the limits, on leaving the box; and say so.
    for typed, kept, note in (
        ("1000", "1008", "Rounded to 1008: sizes are multiples of 16."),
        ("5000", "2048", "Lowered to 2048, the largest size."),
        ("100", "96", "Rounded to 96: sizes are multiples of 16."),
    ):
        page.locator("#width input").fill(typed)
        page.locator("#width input").press("Tab")
        expect(page.locator("#width input")).to_have_value(kept)
        expect(page.locator("#width-note")).to_have_text(note)
    # A slider's number box out of range says what it did. (The batch slider: it is on
    # the page from the start, while the advanced settings' sliders are drawn when their
    # panel first opens, and a box typed into while that happens is redrawn.)
    batch = page.locator("#batch input[type=number]")
    batch.fill("9")
    expect(batch).to_have_value("9")
    batch.press("Tab")
    expect(batch).to_have_value("4")
    expect(page.locator("#batch .range-note")).to_have_text("Goes from 1 to 4: set to 4.")
    batch.fill("1")
    batch.press("Tab")
    expect(page.locator("#batch .range-note")).to_have_text("")

    # Too long a prompt: the counter says so as you type, before anything is sent.
    page.locator("#prompt textarea").fill("fox " * 750)
    expect(page.locator("#prompt-count")).to_have_text("3000 / 2000 · Too long: at most 2000 characters.")
    assert "over" in (page.locator("#prompt-count").get_attribute("class") or "")
    page.locator("#prompt textarea").press("Control+Enter")
    expect(page.locator("#prompt-note")).to_have_text(
        "The prompt is 3000 characters; shorten it to at most 2000."
    )
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    expect(page.locator("#prompt-note")).to_have_text("Write a prompt first.")

    # Nothing of the page was lost, and Gradio showed no error of its own.
    assert page.locator(VIEWER_IMAGE).get_attribute("src") == image
    assert page.locator("#status").inner_text() == status
    expect(page.locator("#history .thumbnail-item")).to_have_count(1)
    assert page.get_by_text("Error", exact=True).count() == 0
    assert page.locator(".toast-body").count() == 0
    # Fixed, it generates, and the note goes.
    generate(page, "a lighthouse, fixed", "miss")
    expect(page.locator("#prompt-note")).to_have_text("")
    page.context.close()


# -- each image its own tier and time --------------------------------------------------------

CAPTION = re.compile(r"seed (\d+) · (memory hit|miss) · (?:generated in )?([\d.]+) (ms|s)")


def test_a_mixed_batch_captions_each_image_with_its_own_tier_and_time(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, locale="en-US")
    small(page)
    page.locator("#seed input").fill("300")
    generate(page, "a mixed batch of lanterns", "miss")
    page.locator("#batch input[type=number]").fill("3")
    page.locator("#batch input[type=number]").press("Enter")
    status = generate(page, "a mixed batch of lanterns", "memory + miss")
    assert status.endswith("seeds 300, 301, 302")
    captions = {}
    for seed, tier, took, unit in CAPTION.findall(page.locator("#result").inner_text()):
        captions[int(seed)] = (tier, float(took) / (1000 if unit == "ms" else 1))
    assert sorted(captions) == [300, 301, 302]
    assert captions[300][0] == "memory hit" and captions[301][0] == captions[302][0] == "miss"
    assert captions[300][1] < min(captions[301][1], captions[302][1])  # not the batch's time
    page.context.close()


# -- the queue ---------------------------------------------------------------------------------


def engine_queue(server: Server) -> dict[str, int]:
    return server.client.get("/api/info").json()["queue"]


def hold_engine(server: Server, gate: Path, prompt: str) -> threading.Thread:
    """Start a generation that holds at the gate; returns once the engine is busy with it."""
    gate.touch()
    before = server.client.get("/api/cache/stats").json()["generations"]
    worker = threading.Thread(
        target=lambda: httpx.get(
            f"{server.url}/run", params={"prompt": prompt, "width": 64, "height": 64}, timeout=120
        )
    )
    worker.start()
    wait_generating(server.client, before, "the held generation to start")
    return worker


def test_a_queued_job_shows_its_place_and_cancel_takes_it_out(
    browser: Browser, gated: Server, gate: Path
) -> None:
    page = open_page(browser, ready(gated, gate).url, locale="en-US")
    small(page, 64)
    before = gated.client.get("/api/cache/stats").json()["generations"]
    worker = hold_engine(gated, gate, "the job in front")
    try:
        page.locator("#prompt textarea").fill("a queued lighthouse")
        page.locator("#generate").click()
        expect(page.locator("#queue-note")).to_have_text(
            "In the queue: 1 of 1 · Interrupt (or Esc) takes it out"
        )
        assert engine_queue(gated)["waiting"] == 1
        page.locator("#cancel").click()
        expect(page.locator("#notice")).to_have_text("Cancelled: nothing was generated.")
        expect(page.locator("#queue-note")).to_have_text("")
        expect(page.locator("#cancel")).to_be_hidden()
        assert engine_queue(gated)["waiting"] == 0
    finally:
        gate.unlink(missing_ok=True)
        worker.join(60)
    stats = gated.client.get("/api/cache/stats").json()
    assert stats["generations"] == before + 1  # the job in front; the cancelled one never ran
    # Asked again, the same image is made afresh.
    generate(page, "a queued lighthouse", "miss")
    page.context.close()


def test_a_full_queue_is_a_notice_and_the_page_tries_again(
    browser: Browser, gated: Server, gate: Path
) -> None:
    page = open_page(browser, ready(gated, gate).url, locale="en-US")
    small(page, 64)
    worker = hold_engine(gated, gate, "a busy server's first job")
    filler = threading.Thread(
        target=lambda: httpx.get(
            f"{gated.url}/run",
            params={"prompt": "the one that waits", "width": 64, "height": 64},
            timeout=120,
        )
    )
    filler.start()
    try:
        wait_until(lambda: engine_queue(gated)["waiting"] >= 1, "the queue (of one) to fill", timeout_s=30)
        page.locator("#prompt textarea").fill("a patient lighthouse")
        page.locator("#generate").click()
        expect(page.locator("#queue-note")).to_contain_text(
            "The server is busy (1 generations waiting); trying again in"
        )
        expect(page.locator("#notice")).to_have_text("")
        assert page.get_by_text("Error", exact=True).count() == 0
    finally:
        gate.unlink(missing_ok=True)
        worker.join(60)
        filler.join(60)
    expect(page.locator("#status")).to_contain_text("miss", timeout=TIMEOUT_MS)  # tried again, made
    expect(page.locator("#queue-note")).to_have_text("")
    page.context.close()


def start_held(page: Page, gate: Path, prompt: str) -> None:
    """Generate `prompt` from the page; returns once its first denoising step holds at the gate."""
    reached = Path(f"{gate}.reached")
    reached.unlink(missing_ok=True)
    gate.touch()
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    wait_until(reached.exists, "the page's generation to start", timeout_s=60)


@pytest.mark.parametrize("how", ["button", "Esc"])
def test_interrupt_stops_a_running_generation_after_its_step_and_stores_nothing(
    browser: Browser, gated: Server, gate: Path, how: str
) -> None:
    page = open_page(browser, ready(gated, gate).url, locale="en-US")
    small(page, 64)
    page.locator("#seed input").fill("11")
    prompt = f"a lighthouse interrupted by {how}"
    try:
        start_held(page, gate, prompt)
        expect(page.locator("#cancel")).to_have_text("Interrupt")
        if how == "button":
            page.locator("#cancel").click()
        else:
            page.keyboard.press("Escape")
    finally:
        gate.unlink(missing_ok=True)
    expect(page.locator("#status")).to_have_text(
        "Interrupted at step 1/8: nothing was stored.", timeout=TIMEOUT_MS
    )
    expect(page.locator("#cancel")).to_be_hidden()
    # Nothing was stored: asked again, it is made.
    again = gated.client.get("/run", params={"prompt": prompt, "seed": 11, "width": 64, "height": 64})
    assert again.json()["cache"] == "miss"
    page.context.close()


def test_interrupt_of_a_shared_generation_only_stops_this_page_waiting(
    browser: Browser, gated: Server, gate: Path
) -> None:
    page = open_page(browser, ready(gated, gate).url, locale="en-US")
    small(page, 64)
    page.locator("#seed input").fill("12")
    prompt = "a lighthouse two people asked for"
    params = {"prompt": prompt, "seed": 12, "width": 64, "height": 64}
    answers: list[httpx.Response] = []
    api = threading.Thread(
        target=lambda: answers.append(httpx.get(f"{gated.url}/run", params=params, timeout=120))
    )
    try:
        start_held(page, gate, prompt)
        api.start()  # an API caller asks for the same image, and joins the generation
        wait_until(lambda: engine_queue(gated)["waiting"] == 0, "the engine to be on it", timeout_s=30)
        page.wait_for_timeout(3000)  # (the API caller's lookup, and its joining the flight)
        page.locator("#cancel").click()
        expect(page.locator("#notice")).to_contain_text(
            "Stopped waiting: someone else asked for the same image"
        )
    finally:
        gate.unlink(missing_ok=True)
        api.join(60)
    assert answers[0].json()["cache"] == "miss"  # made for them, and stored
    assert gated.client.get("/run", params=params).json()["cache"] == "memory"
    page.context.close()


# -- the statistics -----------------------------------------------------------------------------


def test_stats_plot_requests_per_interval_by_tier_with_named_axes(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US")
    small(page)
    page.locator("#seed input").fill("42")  # kept, so that the second press is a hit
    generate(page, "a counted lantern", "miss")
    generate(page, "a counted lantern", "memory hit")
    page.get_by_role("tab", name="Stats").click()
    plot = page.locator("#requests-plot svg")
    for words in ("Time", "Requests per 10 s", "Answered by", "memory", "miss"):
        expect(plot).to_contain_text(words)
    page.context.close()


# -- habits of A1111/Fooocus users --------------------------------------------------------------


def test_reuse_seed_copy_parameters_use_settings_and_readable_download_names(
    browser: Browser, server: Server
) -> None:
    page = open_page(
        browser,
        server.url,
        locale="en-US",
        permissions=["clipboard-read", "clipboard-write"],
        accept_downloads=True,
    )
    small(page, 64)
    page.locator("#seed input").fill("-1")
    page.locator("#batch input[type=number]").fill("2")
    page.locator("#batch input[type=number]").press("Enter")
    status = generate(page, "a red fox in fresh snow", "seeds")
    first, second = (int(s) for s in status.rsplit("seeds ", 1)[1].split(", "))
    expect(page.locator("#seed input")).to_have_value("-1")  # -1 stays -1 ...
    page.locator("#reuse-seed").click()
    expect(page.locator("#seed input")).to_have_value(str(first))  # ... and the drawn one is a click away

    # The parameters box says what the file says, A1111's way, and copies it.
    src = page.locator(VIEWER_IMAGE).get_attribute("src")
    png = Image.open(io.BytesIO(page.request.get(src).body()))
    expect(page.locator("#parameters textarea")).to_have_value(png.info["parameters"])
    page.locator("#parameters button[aria-label=Copy]").click()
    assert page.evaluate("navigator.clipboard.readText()") == png.info["parameters"]

    # Another image of the batch: its parameters, and its settings back into the form.
    page.locator("#result .thumbnail-small").nth(1).click()
    expect(page.locator("#parameters textarea")).to_have_value(re.compile(f"Seed: {second},"))
    page.locator("#prompt textarea").fill("something else")
    page.locator("#use-settings").click()
    expect(page.locator("#seed input")).to_have_value(str(second))
    expect(page.locator("#prompt textarea")).to_have_value("a red fox in fresh snow")

    # A download is named for a person.
    page.locator("#batch input[type=number]").fill("1")
    page.locator("#batch input[type=number]").press("Enter")
    page.locator("#seed input").fill("42")
    generate(page, "A red fox!", "seed 42")
    with page.expect_download() as download:
        page.locator("#result button[aria-label=Download]").click()
    assert download.value.suggested_filename == "seed-42-a-red-fox.png"
    api = server.client.post(
        "/generate", json={"prompt": "A red fox!", "width": 64, "height": 64, "seed": 42}
    )
    assert Path(download.value.path()).read_bytes() == api.content
    page.context.close()


def test_history_survives_a_reload_and_a_click_shows_the_image_in_the_viewer(
    browser: Browser, server: Server
) -> None:
    page = open_page(browser, server.url, locale="en-US")
    small(page)
    generate(page, "the first remembered lighthouse", "seed ")
    first = page.locator(VIEWER_IMAGE).get_attribute("src")
    generate(page, "the second remembered lighthouse", "seed ")
    page.locator("#bypass input").check()
    generate(page, "a lighthouse nobody keeps", "bypass")
    expect(page.locator("#history .thumbnail-item")).to_have_count(3)

    page.reload()
    page.locator("#generate").wait_for()
    # Kept in this browser, checked again by the server; a bypassed image is not kept.
    expect(page.locator("#history .thumbnail-item")).to_have_count(2)
    page.locator("#history .thumbnail-item").nth(1).click()
    viewer = page.locator(VIEWER_IMAGE)
    expect(viewer).to_have_attribute("src", first)
    assert natural_width(page, VIEWER_IMAGE) == 128
    expect(page.locator("#prompt textarea")).to_have_value("the first remembered lighthouse")
    expect(page.locator("#parameters textarea")).to_have_value(
        re.compile("^the first remembered lighthouse\n")
    )
    page.context.close()


def test_presets_name_their_aspect_ratio(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US")
    page.get_by_label("Resolution").click()
    options = [
        o.split("\n")[-1] for o in page.get_by_role("option").all_inner_texts()
    ]  # "✓\n" marks the chosen
    for label in (
        "1024x1024 (1:1)",
        "1280x720 (16:9)",
        "720x1280 (9:16)",
        "1152x864 (4:3)",
        "1344x576 (21:9)",
    ):
        assert label in options
    page.get_by_role("option", name="1280x720 (16:9)").click()
    expect(page.locator("#width input")).to_have_value("1280")
    expect(page.locator("#height input")).to_have_value("720")
    page.context.close()
