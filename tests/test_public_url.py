"""`--public-url` (issue 25 item 11): the absolute URLs the service hands out are
made from it, never from the `Host` or `X-Forwarded-Host` a client sends. Checked
with the clients that read them: the `openai` SDK, the `mcp` SDK, and Gradio's
`/config` (its root, from which the UI and its clients fetch files)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from openai import OpenAI

from tests.conftest import Server

PUBLIC = "https://images.example.com:8443/zimage"
FORGED = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("public-url")
    srv = Server(root / "cache", "--public-url", f"{PUBLIC}/").wait_ready()
    yield srv
    srv.stop()


def test_openai_urls_start_with_the_public_url_whatever_the_host(public: Server) -> None:
    client = OpenAI(base_url=f"{public.url}/v1", api_key="unused", default_headers=FORGED)
    result = client.images.generate(
        prompt="a public harbour", size="64x64", response_format="url", extra_body={"seed": 3}
    )
    (image,) = result.data
    assert image.url is not None and image.url.startswith(f"{PUBLIC}/images/"), image.url
    # The same image is at that path of this server (a proxy maps the public URL here).
    path = image.url.removeprefix(PUBLIC)
    assert public.client.get(path).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_mcp_urls_start_with_the_public_url_whatever_the_host(public: Server) -> None:
    async def call() -> dict:
        transport = streamable_http_client(
            f"{public.url}/mcp", http_client=httpx2.AsyncClient(headers=FORGED, timeout=120)
        )
        async with Client(transport) as client:
            result = await client.call_tool(
                "generate_image", {"prompt": "a public buoy", "width": 64, "height": 64}
            )
        assert not result.is_error, result
        return result.structured_content

    facts = asyncio.run(call())
    assert facts["url"].startswith(f"{PUBLIC}/images/"), facts["url"]


def test_gradios_root_is_the_public_url_whatever_the_host(public: Server, tmp_path: Path) -> None:
    for headers in (FORGED, {}):
        config = public.client.get("/config", headers=headers).json()
        assert config["root"].rstrip("/") == PUBLIC, (headers, config["root"])
