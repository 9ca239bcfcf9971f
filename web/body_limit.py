"""A cap on request bodies, for every route: the API's, Gradio's and any other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from web.openai_api import openai_error

# The largest valid request is two 2,000-character prompts of characters outside
# the BMP: 16 KB as UTF-8, 48 KB if a client escapes each as a `\ud83d\ude00` pair;
# a Gradio event carries the same fields plus a few hundred bytes. Anything larger
# is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024


def replaying(body: bytes, receive: Any) -> Any:
    """A `receive` that hands on `body` (already read whole) once, then the server's."""
    pending: dict | None = {"type": "http.request", "body": body, "more_body": False}

    async def replay() -> dict:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replay


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, on every route (the
    API's, Gradio's and any other) but those `larger` names by exact path (the image
    upload routes: web/uploads.py), judged by Content-Length and by counting what
    arrives (a chunked body has no length).

    The body is read whole before the route runs (it is at most `max_bytes`), so a
    refused request never reaches a route and nothing of it is kept; the route
    then reads it from memory, and later `receive` calls (to see a disconnect) go
    to the server as before.
    """

    def __init__(
        self, app: Any, max_bytes: int = MAX_BODY_BYTES, larger: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before its body arrived: nobody to answer
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    def message(self, path: str) -> str:
        if path in self.larger:
            return f"request body over {self.larger[path]} bytes, the limit of an image upload"
        return f"request body over {self.max_bytes} bytes; a generation request is a few KB"

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        message = self.message(scope["path"])
        if scope["path"].startswith("/v1/"):  # OpenAI's clients read OpenAI's error shape
            response = openai_error(413, message, code="request_too_large")
        else:
            response = JSONResponse({"detail": message}, status_code=413)
        await response(scope, receive, send)
