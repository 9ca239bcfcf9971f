"""CORS in a real browser (issue 25 item 13): Chromium's own preflights for the
headers that MCP browser clients send after `initialize` (`mcp-protocol-version`,
`mcp-session-id`, `last-event-id`) and that the `openai` npm package sends
(`x-stainless-*`), from the allowed origin and from another one.

The page is served at the allowed origin by Playwright's routing, so the browser
sends exactly what it would from there; the calls are the requests those clients
make (a `tools/list` after `initialize`, `models.list()`), with their headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, Route

from bench.browsers import chromium
from tests.conftest import ALLOWED_ORIGIN, KEYED_TOKEN, Server

OTHER_ORIGIN = "https://evil.example"
# What openai-node 4.x/5.x sends from a browser besides Authorization (its
# getPlatformHeaders and retry headers), as the package writes them.
STAINLESS = {
    "x-stainless-lang": "js",
    "x-stainless-package-version": "4.104.0",
    "x-stainless-os": "Unknown",
    "x-stainless-arch": "unknown",
    "x-stainless-runtime": "browser:chrome",
    "x-stainless-runtime-version": "140.0.0",
    "x-stainless-retry-count": "0",
    "x-stainless-timeout": "600",
}
# What the MCP TypeScript SDK's StreamableHTTPClientTransport sends after initialize.
MCP_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-06-18",
    "mcp-session-id": "a-session",
    "last-event-id": "0",
}
CALL = """async ([url, init]) => {
  try {
    const r = await fetch(url, init);
    return {status: r.status, body: await r.text()};
  } catch (e) { return {error: String(e)}; }
}"""


@pytest.fixture(scope="module")
def pages() -> Iterator[dict[str, Page]]:
    """One page on the allowed origin and one on another, each a blank document."""
    # The test server is on 127.0.0.1: a page of a public origin needs the user's
    # permission to reach it (Chromium's Local Network Access prompt), which has no
    # bearing on CORS and nobody to click it here.
    with chromium("--disable-features=LocalNetworkAccessChecks") as browser:
        opened = {}
        for origin in (ALLOWED_ORIGIN, OTHER_ORIGIN):
            page = browser.new_context().new_page()

            def serve(route: Route) -> None:
                route.fulfill(
                    status=200, content_type="text/html", body="<!doctype html><title>client</title>"
                )

            page.route(f"{origin}/**", serve)
            page.goto(f"{origin}/")
            opened[origin] = page
        yield opened


def call(page: Page, url: str, method: str, headers: dict[str, str], body: str | None = None) -> dict:
    init = {"method": method, "headers": headers, **({"body": body} if body is not None else {})}
    return page.evaluate(CALL, [url, init])


def test_openai_browser_clients_headers_pass_the_preflight_of_an_allowed_origin_only(
    keyed_server: Server, pages: dict[str, Page]
) -> None:
    headers = {"authorization": f"Bearer {KEYED_TOKEN}", **STAINLESS}
    got = call(pages[ALLOWED_ORIGIN], f"{keyed_server.url}/v1/models", "GET", headers)
    assert got.get("status") == 200, got
    assert '"object":"list"' in got["body"].replace(" ", "")
    refused = call(pages[OTHER_ORIGIN], f"{keyed_server.url}/v1/models", "GET", headers)
    assert "error" in refused and "Failed to fetch" in refused["error"], refused
    # The preflight itself: the prefixed headers are named back, for the allowed origin only.
    asks = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": ",".join(STAINLESS)}
    ok = keyed_server.client.options("/v1/models", headers={"Origin": ALLOWED_ORIGIN, **asks})
    assert ok.status_code == 200
    assert set(STAINLESS) <= set(ok.headers["access-control-allow-headers"].lower().split(", "))
    no = keyed_server.client.options("/v1/models", headers={"Origin": OTHER_ORIGIN, **asks})
    assert no.status_code == 400 and "access-control-allow-origin" not in no.headers
    unknown = {**asks, "Access-Control-Request-Headers": "x-stainless-lang, x-other"}
    assert (
        keyed_server.client.options("/v1/models", headers={"Origin": ALLOWED_ORIGIN, **unknown}).status_code
        == 400
    )


def test_mcp_browser_clients_headers_pass_the_preflight_of_an_allowed_origin_only(
    keyed_server: Server, pages: dict[str, Page]
) -> None:
    headers = {"authorization": f"Bearer {KEYED_TOKEN}", **MCP_HEADERS}
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'
    got = call(pages[ALLOWED_ORIGIN], f"{keyed_server.url}/mcp", "POST", headers, body)
    assert got.get("status") == 200, got
    assert "generate_image" in got["body"]
    refused = call(pages[OTHER_ORIGIN], f"{keyed_server.url}/mcp", "POST", headers, body)
    assert "error" in refused and "Failed to fetch" in refused["error"], refused
