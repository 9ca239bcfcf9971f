"""HTTP semantics of issue 25 item 16: 405 with `Allow` for a wrong method; on
stored images `Last-Modified`, `If-Match` (412), the date conditions, and byte
ranges (`Accept-Ranges`, 206, 416, `If-Range`), with curl resuming a download."""

from __future__ import annotations

import shutil
import subprocess
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.conftest import Server


@pytest.fixture(scope="module")
def stored(server: Server) -> tuple[str, bytes, str]:
    """A stored image: its URL, its bytes and its ETag."""
    made = server.client.get("/run", params={"prompt": "a range probe", "width": 64, "height": 64}).json()
    got = server.client.get(made["image_url"])
    assert got.status_code == 200 and len(got.content) > 200
    return made["image_url"], got.content, got.headers["etag"]


def test_a_wrong_method_gets_405_naming_the_allowed_ones(server: Server) -> None:
    c = server.client
    cases = {
        ("POST", "/health"): "GET, HEAD",
        ("DELETE", "/run"): "GET, HEAD",
        ("GET", "/generate"): "POST",
        ("PUT", "/images/" + "0" * 64 + ".png"): "GET, HEAD",
        ("GET", "/v1/images/generations"): "POST",
        ("POST", "/sdapi/v1/samplers"): "GET, HEAD",
        ("PATCH", "/api/cache"): "DELETE",
    }
    for (method, path), allow in cases.items():
        got = c.request(method, path)
        assert got.status_code == 405, (method, path, got.status_code)
        assert got.headers["allow"] == allow, (method, path)
        assert method in got.json()["detail"] and allow in got.json()["detail"]
    # HEAD of a POST-only route is the 405 of its GET, with no body.
    head = c.head("/generate")
    assert head.status_code == 405 and head.headers["allow"] == "POST" and head.content == b""
    # Paths of no route of ours stay Gradio's (404), and the right method still works.
    assert c.post("/no-such-route").status_code == 404
    assert c.get("/health").status_code == 200


def test_stored_images_have_last_modified_and_honour_date_conditions(
    server: Server, stored: tuple[str, bytes, str]
) -> None:
    url, data, _ = stored
    got = server.client.get(url)
    assert got.headers["accept-ranges"] == "bytes"
    made = parsedate_to_datetime(got.headers["last-modified"]).timestamp()
    assert time.time() - 600 < made <= time.time()
    date = got.headers["last-modified"]
    assert server.client.get(url, headers={"If-Modified-Since": date}).status_code == 304
    earlier = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert server.client.get(url, headers={"If-Modified-Since": earlier}).content == data
    assert server.client.get(url, headers={"If-Unmodified-Since": earlier}).status_code == 412
    assert server.client.get(url, headers={"If-Unmodified-Since": date}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.1.3).
    both = {"If-None-Match": '"other"', "If-Modified-Since": date}
    assert server.client.get(url, headers=both).content == data


def test_if_match_that_names_another_version_gets_412(server: Server, stored: tuple[str, bytes, str]) -> None:
    url, data, etag = stored
    for tag in ('"0000"', f"W/{etag}", '"a", "b"'):
        got = server.client.get(url, headers={"If-Match": tag})
        assert got.status_code == 412, tag
        assert got.content == b"" and got.headers["etag"] == etag
    for tag in (etag, "*", f'"x", {etag}'):
        assert server.client.get(url, headers={"If-Match": tag}).content == data, tag
    # Preconditions are not evaluated for an image that is not there.
    assert server.client.get(f"/images/{'0' * 64}.png", headers={"If-Match": '"x"'}).status_code == 404


def test_ranges_of_a_stored_image(server: Server, stored: tuple[str, bytes, str]) -> None:
    url, data, etag = stored
    size = len(data)
    cases = {"bytes=0-99": (0, 99), "bytes=100-": (100, size - 1), "bytes=-10": (size - 10, size - 1)}
    cases["bytes=50-999999"] = (50, size - 1)
    for asked, (first, last) in cases.items():
        got = server.client.get(url, headers={"Range": asked})
        assert got.status_code == 206, asked
        assert got.headers["content-range"] == f"bytes {first}-{last}/{size}", asked
        assert got.content == data[first : last + 1], asked
        assert got.headers["content-length"] == str(last - first + 1)
    past = server.client.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    # Ignored (the whole image): several ranges, another unit, nonsense.
    for asked in ("bytes=0-1,5-9", "items=0-1", "bytes=abc", "bytes=9-2"):
        got = server.client.get(url, headers={"Range": asked})
        assert (got.status_code, got.content) == (200, data), asked
    # If-Range: the part only of this version (our ETag or our exact date).
    date = server.client.head(url).headers["last-modified"]
    for validator, status in ((etag, 206), (date, 206), ('"another"', 200), (f"W/{etag}", 200)):
        got = server.client.get(url, headers={"Range": "bytes=0-9", "If-Range": validator})
        assert got.status_code == status, validator
    head = server.client.head(url, headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.content == b""


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_resumes_an_interrupted_download(
    server: Server, stored: tuple[str, bytes, str], tmp_path: Path
) -> None:
    url, data, _ = stored
    partial = tmp_path / "image.png"
    partial.write_bytes(data[:123])  # what an interrupted download left
    subprocess.run(
        ["curl", "-sSf", "-C", "-", "-o", str(partial), f"{server.url}{url}"], check=True, timeout=30
    )
    assert partial.read_bytes() == data
