"""The Create tab's LoRA picker (issue 24), in a real headless Chromium (Debian's):
it lists the tiny model's demo LoRA, sends the LoRAs picked with the generation,
whose key holds them (the same twice is a hit, another scale a miss, and the HTTP
API with the same LoRA gets the same image), and an image's settings put back
restore them."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from bench.browsers import chromium, generate, open_page, small
from pipeline.tiny_model import DEMO_LORA_NAME
from tests.conftest import Server

VIEWER_IMAGE = "#result .media-button img"
PROMPT = "a lantern fox in the style of the demo lora"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def pick(page: Page, row: int, name: str, scale: float) -> list[str]:
    """Row `row`'s LoRA and scale set as a person does (the dropdown's option, the
    slider's number box); the options the dropdown offered."""
    page.locator(f"#lora-{row} input").click()
    offered = [o.split("\n")[-1] for o in page.get_by_role("option").all_inner_texts()]  # "✓\n": chosen
    page.get_by_role("option", name=name, exact=True).click()
    expect(page.locator(f"#lora-{row} input")).to_have_value(name)
    box = page.locator(f"#lora-{row}-scale input[type=number]")
    box.fill(f"{scale:g}")
    box.press("Enter")
    return offered


def shown_pixels(page: Page) -> np.ndarray:
    src = page.locator(VIEWER_IMAGE).get_attribute("src")
    assert src
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def test_a_lora_picked_makes_another_image_keyed_by_its_scale(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US")
    small(page, 64)
    page.locator("#seed input").fill("42")
    expect(page.locator("#loras")).to_be_visible()  # the tiny model's demo LoRA is listed
    assert page.get_by_label("LoRA 1", exact=True).is_visible()  # labelled
    assert pick(page, 1, DEMO_LORA_NAME, 0.8) == ["None", DEMO_LORA_NAME]
    generate(page, PROMPT, "miss")
    with_lora = shown_pixels(page)
    plain = server.client.post("/generate", json={"prompt": PROMPT, "width": 64, "height": 64, "seed": 42})
    assert plain.status_code == 200
    assert not np.array_equal(with_lora, np.asarray(Image.open(io.BytesIO(plain.content)).convert("RGB")))
    # The HTTP API naming the same LoRA and scale finds the page's image: one key.
    api = server.client.post(
        "/generate",
        json={
            "prompt": PROMPT,
            "width": 64,
            "height": 64,
            "seed": 42,
            "loras": [{"name": DEMO_LORA_NAME, "scale": 0.8}],
        },
    )
    assert api.headers["X-Cache"] != "miss"
    assert np.array_equal(with_lora, np.asarray(Image.open(io.BytesIO(api.content)).convert("RGB")))

    generate(page, PROMPT, "memory")  # the same again: a hit
    pick(page, 1, DEMO_LORA_NAME, 0.5)
    generate(page, PROMPT, "miss")  # another scale: a miss
    assert not np.array_equal(with_lora, shown_pixels(page))
    # Its parameters name the LoRA as A1111 writes it.
    expect(page.locator("#parameters textarea")).to_have_value(
        re.compile(f"^{PROMPT} <lora:{DEMO_LORA_NAME}:0.5>\n")
    )

    # The first image's settings, from the history, put its LoRA back.
    pick(page, 1, "None", 1.0)
    page.locator("#history .thumbnail-item").nth(1).click()
    expect(page.locator("#lora-1 input")).to_have_value(DEMO_LORA_NAME)
    expect(page.locator("#lora-1-scale input[type=number]")).to_have_value("0.8")
    expect(page.locator("#lora-2 input")).to_have_value("None")
    page.context.close()
