"""The results gallery in a real headless Chromium (Debian's): a batch downloads as
one zip of PNGs under their readable names, and the fullscreen view is not covered
by the resolution list."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from bench.browsers import chromium, generate, open_page, small
from tests.conftest import Server
from web.ui_zip import ZIP_ROUTE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_download_all_saves_the_batch_as_one_zip_of_named_pngs(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US", accept_downloads=True)
    small(page, 64)
    page.locator("#seed input").fill("4242")
    page.locator("#batch input[type=number]").fill("2")
    page.locator("#batch input[type=number]").press("Enter")
    generate(page, "Two foxes, side by side", "seeds 4242, 4243")
    with page.expect_download() as download:
        page.locator("#result button", has_text="Download all").click()
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as archive:
        names = archive.namelist()
        files = {name: archive.read(name) for name in names}
    assert names == ["seed-4242-two-foxes-side-by-side.png", "seed-4243-two-foxes-side-by-side.png"]
    # The very bytes the API serves for those settings.
    for seed in (4242, 4243):
        api = server.client.post(
            "/generate", json={"prompt": "Two foxes, side by side", "width": 64, "height": 64, "seed": seed}
        )
        assert files[f"seed-{seed}-two-foxes-side-by-side.png"] == api.content
        assert api.content.startswith(PNG_MAGIC)
    page.context.close()


def test_the_resolution_list_stays_off_the_fullscreen_view(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url, locale="en-US")
    small(page, 64)
    generate(page, "a lighthouse seen fullscreen", "seed")
    options = page.locator("#preset .options")
    page.locator("#preset input").click()
    expect(options).to_be_visible()  # the list, as it opens on the page
    # Away by the person's own click (a blur by script would drop focus on the body,
    # which static/ui.js hands back to the field it left: the list would open again).
    page.locator("#prompt textarea").click()
    expect(options).to_be_hidden()

    # In the fullscreen view, the keyboard reaching the resolution field (Tab from
    # the view, or kept there) opens no list over the image.
    page.locator("#result button[aria-label=Fullscreen]").click()
    expect(page.locator("#result.fullscreen")).to_be_visible()
    page.locator("#preset input").focus()
    expect(page.locator("#preset input")).to_be_focused()
    expect(options).to_be_hidden()

    # Out of the view (the click takes the keyboard off the field), the list opens again.
    page.locator("#result button[aria-label='Exit fullscreen mode']").click()
    expect(page.locator("#result.fullscreen")).to_have_count(0)
    page.locator("#preset input").click()
    expect(options).to_be_visible()
    page.context.close()


def test_the_zip_route_names_a_bad_request_and_gives_nobody_elses_files(server: Server) -> None:
    none = server.client.get(ZIP_ROUTE)
    assert none.status_code == 422 and none.json()["detail"].startswith("f:")
    for path in ("/etc/passwd", "/tmp/zimage-ui-x/results/default/" + "0" * 64 + "/seed-1.png"):
        refused = server.client.get(ZIP_ROUTE, params={"f": path})
        assert refused.status_code == 403, refused.text
        assert refused.json() == {"detail": f"File not allowed: {path}."}
