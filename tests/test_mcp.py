"""The MCP server at /mcp, with the `mcp` package's own client over Streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import time
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from tests.conftest import KEYED_TOKEN, Server


def mcp_session(server: Server, token: str | None = None) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = streamable_http_client(
        f"{server.url}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=120)
    )
    return Client(transport)


async def list_and_call(server: Server, calls: list[dict[str, Any]], token: str | None = None) -> tuple:
    async with mcp_session(server, token) as client:
        tools = await client.list_tools()
        results = [await client.call_tool("generate_image", arguments) for arguments in calls]
    return tools.tools, results


def test_the_tool_is_listed_with_a_schema_a_model_can_use(server: Server) -> None:
    tools, _ = asyncio.run(list_and_call(server, []))
    assert {t.name for t in tools} == {
        "generate_image",
        "edit_image",
    }  # edit_image: tests/test_edit_routes.py
    tool = next(t for t in tools if t.name == "generate_image")
    assert tool.description.startswith("Generate an image from a text prompt")
    schema = tool.input_schema
    assert schema["required"] == ["prompt"]
    assert set(schema["properties"]) == {
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "seed",
        "steps",
        "guidance_scale",
        "loras",
    }
    assert all(prop.get("description") for prop in schema["properties"].values())
    assert schema["properties"]["width"]["default"] == 1024


def test_a_call_returns_the_url_and_a_thumbnail_and_shares_the_cache(server: Server) -> None:
    arguments = {"prompt": "an mcp lighthouse", "width": 320, "height": 192, "seed": 8}
    _, (first, again, bad) = asyncio.run(
        list_and_call(server, [arguments, arguments, {"prompt": "   ", "width": 64, "height": 64}])
    )
    assert not first.is_error
    text, preview = first.content
    facts = first.structured_content
    assert facts["url"].startswith(f"{server.url}/images/") and facts["url"] in text.text
    assert (facts["seed"], facts["width"], facts["height"], facts["cache"]) == (8, 320, 192, "miss")
    full = httpx.get(facts["url"])
    assert full.status_code == 200 and Image.open(io.BytesIO(full.content)).size == (320, 192)
    assert preview.mime_type == "image/jpeg"
    thumb = Image.open(io.BytesIO(base64.b64decode(preview.data)))
    assert (thumb.format, thumb.size) == ("JPEG", (256, 154))

    assert again.structured_content["cache"] == "memory"
    assert again.structured_content["url"] == facts["url"]
    run = server.client.get(
        "/run", params={"prompt": "an mcp lighthouse", "width": 320, "height": 192, "seed": 8}
    )
    assert run.json()["cache"] == "memory"  # one cache for MCP and HTTP

    assert bad.is_error
    assert "prompt" in bad.content[0].text and "empty" in bad.content[0].text


def test_with_api_keys_mcp_needs_the_token_and_uses_its_namespace(keyed_server: Server) -> None:
    refused = httpx.post(
        f"{keyed_server.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"

    arguments = {"prompt": "a keyed mcp owl", "width": 64, "height": 64, "seed": 2}
    tools, (result,) = asyncio.run(list_and_call(keyed_server, [arguments], token=KEYED_TOKEN))
    assert [tool.name for tool in tools] == ["generate_image", "edit_image"]
    url = result.structured_content["url"]
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEYED_TOKEN}"}).status_code == 200


def raw_exchange(server: Server, data: bytes, timeout_s: float = 10) -> bytes:
    """Send `data` on one connection and read until the server closes it (the last
    request should say `Connection: close`), or the time is up."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s) as sock:
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
        return got


def test_head_and_get_on_mcp_complete_and_the_connection_serves_on(server: Server) -> None:
    # HEAD was served as the SDK's GET: an event stream that never ended, so the
    # HEAD never completed and the next request on the connection was never answered.
    got = raw_exchange(
        server,
        b"HEAD /mcp HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
        b"GET /mcp HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    heads = [part.split(b"\r\n", 1)[0] for part in got.split(b"HTTP/1.1 ")[1:]]
    assert heads == [b"405 Method Not Allowed"] * 2 + [b"200 OK"], got[:2000]
    assert got.count(b"allow: POST\r\n") == 2
    assert got.endswith(b"}") and b'"status":"ok"' in got.rsplit(b"\r\n\r\n", 1)[1]


def test_without_a_token_the_sdk_says_what_to_send(keyed_server: Server) -> None:
    # The SDK shows a JSON-RPC error's message; for any other body only "-32603
    # Server returned an error response".
    async def initialize(token: str | None) -> str:
        try:
            async with mcp_session(keyed_server, token) as client:
                await client.list_tools()
        except Exception as exc:  # the SDK's MCPError, possibly inside a task group's ExceptionGroup
            while hasattr(exc, "exceptions"):  # an ExceptionGroup
                exc = exc.exceptions[0]
            return str(exc)
        raise AssertionError("the call went through without a valid token")

    missing = asyncio.run(initialize(None))
    assert "Authorization: Bearer <token>" in missing and "HTTP 401" in missing, missing
    assert "Server returned an error response" not in missing
    wrong = asyncio.run(initialize("not-a-known-token-at-all"))
    assert "unknown API token" in wrong and "Authorization: Bearer" in wrong, wrong
    # Plain HTTP clients still get the API's `detail` and the status.
    refused = httpx.post(f"{keyed_server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
    assert refused.json()["error"]["code"] == -32001 and refused.json()["id"] is None


def test_bad_tool_arguments_are_named_with_what_is_wrong(server: Server) -> None:
    async def call(arguments: dict[str, Any]) -> str:
        async with mcp_session(server) as client:
            result = await client.call_tool("generate_image", arguments)
        assert result.is_error
        return result.content[0].text

    text = asyncio.run(call({"prompt": "an owl", "width": "wide", "steps": 2.5}))
    assert text.startswith("generate_image: "), text
    assert "width: " in text and "integer" in text and "steps: " in text, text
    assert "pydantic" not in text and "validation error" not in text and "http" not in text, text
    assert "\n" not in text
    missing = asyncio.run(call({"width": 64}))
    assert missing == "generate_image: prompt: Field required", missing
