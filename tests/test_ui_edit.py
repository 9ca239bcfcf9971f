"""The UI's image tab (web/ui_edit.py, static/edit.js) in a real headless Chromium:
choose a PNG, paint a mask, edit (a miss), edit again (a hit), and see a new image;
and `/api/edit` in the UI's login session with API keys (httpx): each session in its
own namespace, only from the page itself, and nothing without a session or a key."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from bench.browsers import TIMEOUT_MS, chromium, open_page
from tests.conftest import Server
from tests.test_image_input import encoded, picture
from tests.test_ui_a11y import serious

ALICE, BOB = "alice-edit-token-0123456789", "bob-edit-token-0123456789ab"
PAGE = {"Sec-Fetch-Site": "same-origin"}  # what the browser adds to the page's own fetch


def shown(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def edit_tab_with(browser: Browser, url: str, array: np.ndarray, name: str) -> Page:
    """The UI at `url` (English) on its image tab, with `array` chosen as a PNG `name`."""
    page = open_page(browser, url, locale="en-US")
    page.get_by_role("tab", name="Edit an image").click()
    page.get_by_label("Image (PNG, JPEG or WebP)").set_input_files(
        {"name": name, "mimeType": "image/png", "buffer": encoded(array)}
    )
    return page


def test_the_image_tab_inpaints_a_painted_mask_a_miss_then_a_hit(server: Server) -> None:
    array = picture(41)  # 64 x 64
    with chromium() as browser:
        page = edit_tab_with(browser, server.url, array, "in.png")
        mask = page.locator("#edit-mask")
        expect(mask).to_be_visible()
        # No --controlnet here: the ControlNet part is disabled and says which flag enables it.
        expect(page.get_by_label("Use the image as a control image")).to_be_disabled()
        expect(page.locator("#edit-control-note")).to_contain_text("start it with --controlnet")
        box = mask.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=5)
        page.mouse.up()
        page.get_by_label("Strength (how much is redrawn)").press("ArrowRight")  # 0.75 -> 0.8
        expect(page.locator("#edit-strength-value")).to_have_text("0.8")
        page.locator("#edit-prompt").fill("a lantern painted in")

        def edit(expect_status: str) -> str:
            runs = page.evaluate("window.zimageEdit.runs")
            page.get_by_role("button", name="Edit", exact=True).press("Enter")  # the keyboard works
            page.wait_for_function("n => window.zimageEdit.runs > n", arg=runs, timeout=TIMEOUT_MS)
            expect(page.locator("#edit-status")).to_contain_text(expect_status)
            return page.locator("#edit-result").get_attribute("src") or ""

        first = edit("inpaint · miss · seed 42")
        again = edit("inpaint · memory · seed 42")
        assert again == first
        result = shown(first)
        assert result.shape == array.shape and not np.array_equal(result, array)
        assert serious(page) == []  # the tab, as used, for everyone (axe)
        page.context.close()

        # In Chinese and the dark theme: the tab's words, and axe again.
        page = open_page(browser, server.url, locale="zh-CN", color_scheme="dark")
        page.get_by_role("tab", name="编辑图像").click()
        page.get_by_label("图像（PNG、JPEG 或 WebP）").set_input_files(
            {"name": "in.png", "mimeType": "image/png", "buffer": encoded(array)}
        )
        expect(page.locator("#edit-mask")).to_be_visible()
        expect(page.get_by_role("button", name="清除蒙版")).to_be_visible()
        expect(page.get_by_label("将图像用作控制图")).to_be_disabled()
        expect(page.locator("#edit-control-note")).to_contain_text("--controlnet tiny")
        assert serious(page) == []
        page.context.close()


# -- the UI's login session on /api/edit ---------------------------------------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("edit-keys")
    keys = root / "api-keys.txt"
    keys.write_text(f"{ALICE} alice\n{BOB} bob\n")
    srv = Server(root / "cache", "--api-keys", str(keys)).wait_ready()
    yield srv
    srv.stop()


def session(server: Server, user: str | None = None, token: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=120)
    if user is not None:
        assert client.post("/login", data={"username": user, "password": token}).status_code == 200
    return client


def edit(
    client: httpx.Client, image: bytes, headers: dict[str, str], response_format: str = "b64_json"
) -> httpx.Response:
    files = {"image": ("in.png", image, "image/png")}
    data = {"prompt": "a private lantern", "steps": "2", "seed": "5", "response_format": response_format}
    return client.post("/api/edit", files=files, data=data, headers=headers)


def test_api_edit_takes_the_ui_session_as_its_namespace_and_only_from_the_page(keyed: Server) -> None:
    image = encoded(picture(42))
    alice, bob, nobody = session(keyed, "alice", ALICE), session(keyed, "bob", BOB), session(keyed)

    first = edit(alice, image, PAGE)
    assert first.status_code == 200, first.text
    made = first.json()["images"][0]
    assert made["cache"] == "miss"
    # It is alice's: her API key finds it in her namespace, the same bytes.
    stored = keyed.client.get(made["image_url"], headers={"Authorization": f"Bearer {ALICE}"})
    assert stored.status_code == 200 and stored.content == base64.b64decode(made["b64_json"])
    assert edit(alice, image, PAGE).json()["images"][0]["cache"] == "memory"
    assert keyed.client.get(made["image_url"], headers={"Authorization": f"Bearer {BOB}"}).status_code == 404

    # Bob's session: his own miss (nothing tells him alice made it), and not her namespace.
    theirs = edit(bob, image, PAGE).json()["images"][0]
    assert theirs["cache"] == "miss"
    assert edit(bob, image, PAGE | {"X-Namespace": "alice"}).status_code == 403

    # No session and no key; or the session from another site (a cross-site form): 401.
    assert edit(nobody, image, PAGE).status_code == 401
    assert edit(alice, image, {"Sec-Fetch-Site": "cross-site"}).status_code == 401
    assert edit(alice, image, {"Origin": "https://elsewhere.example"}).status_code == 401
    # A key still works as before, and a session counts on /api/edit only.
    assert edit(nobody, image, {"Authorization": f"Bearer {ALICE}"}).json()["images"][0]["cache"] == "memory"
    assert alice.get(made["image_url"], headers=PAGE).status_code == 401
    # The inline image is asked for by name; anything else is a 422 naming the field.
    assert edit(alice, image, PAGE, "url").json()["images"][0]["b64_json"] is None
    wrong = edit(alice, image, PAGE, "base64")
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "response_format"]
