"""Signed OpenAI image URLs with `--api-keys` (issue 25 item 17): the `url` the
`openai` SDK gets back downloads without the Bearer token, for an hour, and only
the image and namespace it was signed for."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
from openai import OpenAI

from tests.conftest import KEYED_NAMESPACE, KEYED_TOKEN, Server
from web.signed_urls import SIGNED_URL_TTL_S, UrlSigner


def test_an_openai_url_downloads_without_the_token_for_an_hour(keyed_server: Server) -> None:
    client = OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEYED_TOKEN)
    result = client.images.generate(
        prompt="a signed lighthouse", size="64x64", response_format="url", extra_body={"seed": 17}
    )
    (image,) = result.data
    assert image.url is not None
    parts = urlsplit(image.url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert set(query) == {"ns", "expires", "sig"} and query["ns"] == KEYED_NAMESPACE
    assert abs(int(query["expires"]) - (time.time() + SIGNED_URL_TTL_S)) < 120
    fetched = httpx.get(image.url)  # what a chat front end or curl does: no Authorization
    assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
    authed = keyed_server.client.get(parts.path, headers={"Authorization": f"Bearer {KEYED_TOKEN}"})
    assert authed.content == fetched.content
    # The signature, which lets anyone fetch the image, stays out of the access log.
    log = keyed_server.log_path.read_text()
    assert f"{parts.path}?ns={KEYED_NAMESPACE}" in log and "sig=<redacted>" in log
    assert query["sig"] not in log
    # The path alone still needs the token.
    assert httpx.get(f"{keyed_server.url}{parts.path}").status_code == 401

    def refused(url: str, why: str) -> None:
        got = httpx.get(url)
        assert got.status_code == 403, (url, got.status_code)
        assert why in got.json()["detail"], got.json()

    base = f"{keyed_server.url}{parts.path}"
    # Another namespace, another image, a changed expiry or signature: refused.
    refused(image.url.replace(f"ns={KEYED_NAMESPACE}", "ns=someone-else"), "does not match")
    refused(
        image.url.replace(f"expires={query['expires']}", f"expires={int(query['expires']) + 3600}"), "match"
    )
    refused(image.url.replace(f"sig={query['sig']}", f"sig={'0' * 64}"), "does not match")
    other = base.replace(".png", ".webp")
    refused(f"{other}?{parts.query}", "does not match")
    refused(f"{base}?sig={query['sig']}", "needs ns, expires and sig")
    # A URL signed (with the same keys file, as another replica would) two hours ago.
    signer = UrlSigner({KEYED_TOKEN: KEYED_NAMESPACE})
    refused(
        f"{keyed_server.url}{signer.sign(parts.path, KEYED_NAMESPACE, now=time.time() - 7200)}", "expired"
    )
    assert (
        httpx.get(f"{keyed_server.url}{signer.sign(parts.path, KEYED_NAMESPACE)}").content == fetched.content
    )


def test_without_api_keys_urls_are_not_signed(server: Server) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    (image,) = client.images.generate(prompt="an unsigned buoy", size="64x64", response_format="url").data
    assert image.url is not None and "?" not in image.url
    assert httpx.get(image.url).status_code == 200
