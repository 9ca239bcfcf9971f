"""MCP (Model Context Protocol) server at `/mcp`: one tool, `generate_image`.

Streamable HTTP, stateless, JSON responses: every call is one POST, so it works
behind any proxy and across replicas without sticky sessions. The same API keys
guard it as the rest of the API (`Authorization: Bearer <token>`, the token
deciding the namespace), and the tool goes through `GenerationService.generate`,
so it shares the cache. A call returns the image's URL and a small thumbnail
(not the full image: it would fill a model's context).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ImageContent, TextContent
from pydantic import Field, ValidationError

from pipeline import limits
from pipeline.errors import RequestInvalid
from pipeline.lora import LoraSpec
from pipeline.request import GenerationRequest
from pipeline.results import GenerationResult
from pipeline.service import GenerationService
from web.auth import caller_namespace
from web.errors import EXPECTED, user_message
from web.mcp_edit import add_edit_tool
from web.public_urls import absolute_url
from web.schemas import image_path

MCP_PATH = "/mcp"
THUMBNAIL_SIDE = 256
NAMESPACE_STATE = "zimage_namespace"
INSTRUCTIONS = (
    "Text-to-image with Z-Image-Turbo. Call generate_image with an English or Chinese prompt; it "
    "returns a URL of the full image and a small preview. The same arguments (seed included) return "
    "the same image from the cache at once; change the seed for a variation."
)


# JSON-RPC codes for refusals before any MCP message is read (the server-defined
# range, -32000 to -32099): no or a wrong token; a malformed X-Namespace header.
UNAUTHORIZED = -32001
BAD_HEADER = -32600


class ArgumentsNamed(MCPServer):
    """The MCP server whose tools' bad arguments are answered as the HTTP routes
    answer them: each argument named, with what is wrong, on one line. The SDK
    would return pydantic's whole text, with a link to its documentation."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            raise ToolError(f"{name}: {user_message(exc.__cause__)}") from exc.__cause__


def create_mcp_server(service: GenerationService) -> MCPServer:
    """The MCP server and its tool (transport-agnostic; see `McpEndpoint` for HTTP)."""
    mcp = ArgumentsNamed("z-image-turbo", instructions=INSTRUCTIONS)

    @mcp.tool(name="generate_image", title="Generate an image")
    async def generate_image(
        prompt: Annotated[
            str,
            Field(
                description=f"What to draw, in English or Chinese; up to {limits.MAX_PROMPT_CHARS} characters."
            ),
        ],
        ctx: Context,
        negative_prompt: Annotated[
            str, Field(description="What to avoid; only used when guidance_scale > 0.")
        ] = "",
        width: Annotated[
            int,
            Field(
                description=f"Width in pixels, a multiple of {limits.SIZE_MULTIPLE}, {limits.REAL_MODEL_MIN_SIZE}..{limits.MAX_SIZE} "
                f"({limits.MIN_SIZE}.. on the demo model)."
            ),
        ] = limits.DEFAULT_SIZE,
        height: Annotated[
            int, Field(description=f"Height in pixels, a multiple of {limits.SIZE_MULTIPLE}, like width.")
        ] = limits.DEFAULT_SIZE,
        seed: Annotated[
            int,
            Field(
                description=f"Random seed 0..{limits.MAX_SEED}; {limits.RANDOM_SEED} draws one. Same seed, same image."
            ),
        ] = limits.RANDOM_SEED,
        steps: Annotated[
            int,
            Field(
                description=f"Denoising steps, {limits.MIN_STEPS}..{limits.MAX_STEPS}; the model is made for {limits.DEFAULT_STEPS}."
            ),
        ] = limits.DEFAULT_STEPS,
        guidance_scale: Annotated[
            float,
            Field(
                description=f"Classifier-free guidance 0..{limits.MAX_GUIDANCE:g}; 0 (off) suits this model best."
            ),
        ] = limits.DEFAULT_GUIDANCE,
        loras: Annotated[
            list[LoraSpec],
            Field(
                description=f"LoRAs to apply, up to {limits.MAX_LORAS}, each a name (as the server's "
                "`/api/info` lists them) and a scale; none by default."
            ),
        ] = [],  # noqa: B006 (the SDK reads the default for the tool's schema; never mutated)
    ) -> CallToolResult:
        """Generate an image from a text prompt with Z-Image-Turbo (photorealistic, bilingual
        text rendering). Returns the image's URL, its seed and size, and a small preview."""
        request = ctx.request_context.request
        namespace = request.scope["state"][NAMESPACE_STATE]
        try:
            generation = GenerationRequest(
                prompt=prompt,
                negative_prompt=negative_prompt,
                width=width,
                height=height,
                seed=seed,
                steps=steps,
                guidance_scale=guidance_scale,
                loras=loras,
            )
            result = await service.generate(generation, namespace=namespace)
        except (ValidationError, *EXPECTED) as exc:
            return _error(user_message(exc))
        return await image_result(result, request)

    # web/mcp_edit.py: edit_image, the image as base64 or the URL of a cached image.
    add_edit_tool(mcp, service, lambda request: request.scope["state"][NAMESPACE_STATE], image_result, _error)
    return mcp


async def image_result(result: GenerationResult, request: Request) -> CallToolResult:
    """A tool's answer for `result`: its URL (absolute), facts, and a small preview."""
    path = image_path(result)
    url = None if path is None else absolute_url(request, path)
    preview = await asyncio.to_thread(thumbnail, result.entry.data)
    facts: dict[str, Any] = {
        "url": url,
        "seed": result.seed,
        "width": result.request.width,
        "height": result.request.height,
        "format": result.entry.ext,
        "cache": result.cache,
        "key": result.key,
    }
    text = (
        f"Image ({result.request.width}x{result.request.height}, seed {result.seed}): {url}"
        if url
        else f"Image ({result.request.width}x{result.request.height}, seed {result.seed}); "
        "not stored (a do-not-cache prompt), so only the preview below exists"
    )
    return CallToolResult(
        content=[
            TextContent(type="text", text=text),
            ImageContent(type="image", data=base64.b64encode(preview).decode(), mime_type="image/jpeg"),
        ],
        structured_content=facts,
    )


class McpEndpoint:
    """ASGI app for `/mcp`: authenticates like every API route (401/403/422 before any
    MCP message is read), answers any method but POST with 405, then hands the
    request to the MCP session manager."""

    def __init__(self, mcp: MCPServer) -> None:
        # API keys protect it; a Host check would refuse every deployment behind a
        # proxy that passes its own Host, so the SDK's DNS-rebinding guard stays off.
        mcp.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager = mcp.session_manager

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        # Refusals are JSON-RPC errors (id null: the message is not read), which MCP
        # clients show to the person; any other body they report as "Server returned
        # an error response" only. `detail` keeps the API's shape for plain HTTP.
        try:
            namespace = await caller_namespace(request)
        except HTTPException as exc:
            hint = f": {AUTH_HINT}" if exc.status_code == 401 else ""
            message = f"{exc.detail} (HTTP {exc.status_code}){hint}"
            body = rpc_error(UNAUTHORIZED, message) | {"detail": exc.detail}
            await JSONResponse(body, status_code=exc.status_code, headers=exc.headers)(scope, receive, send)
            return
        except RequestInvalid as exc:
            detail = [{"type": "value_error", "loc": ["header", exc.field], "msg": exc.message}]
            body = rpc_error(BAD_HEADER, f"{exc.field}: {exc.message}") | {"detail": detail}
            await JSONResponse(body, status_code=422)(scope, receive, send)
            return
        if scope["method"] != "POST":
            # Stateless and JSON-only: no session to end (DELETE) and no server-sent
            # stream to open (GET, and HEAD, which HeadAsGet serves as GET), which
            # MCP answers with 405. The SDK's GET would hold an idle stream open for ever.
            answer = JSONResponse(
                {
                    "jsonrpc": "2.0",
                    "id": "server-error",
                    "error": {"code": -32600, "message": "Method Not Allowed: MCP here is POST only"},
                },
                status_code=405,
                headers={"Allow": "POST"},
            )
            await answer(scope, receive, send)
            return
        scope.setdefault("state", {})[NAMESPACE_STATE] = namespace
        await self.manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The session manager's task group; must wrap the server's lifetime."""
        async with self.manager.run():
            yield


AUTH_HINT = (
    "this MCP server needs an API token: configure your MCP client to send the header "
    "`Authorization: Bearer <token>` with your namespace's token"
)


def rpc_error(code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC error response to a message that was not read (id null)."""
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


def thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG at most `side` pixels on its longer edge."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.thumbnail((side, side))  # shrunk first: the conversion then touches few pixels
        out = io.BytesIO()
        img.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def _error(message: str) -> CallToolResult:
    # A tool error goes back to the model as a result it can read and act on.
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)
