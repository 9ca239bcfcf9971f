"""HTTP behaviour shared by every route, Gradio's included: HEAD answered like GET
without a body, and the cross-origin (CORS) policy of `--cors-origins`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

# What a browser script on an allowed origin may send and read.
CORS_METHODS = ["GET", "HEAD", "POST", "DELETE", "OPTIONS"]
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "X-Namespace", "If-None-Match"]
CORS_EXPOSED_HEADERS = ["X-Cache", "X-Key", "X-Seed", "Server-Timing", "Retry-After", "ETag"]


class HeadAsGet:
    """ASGI middleware: a HEAD request is served as the GET of the same URL, and
    everything after the response head is dropped (the status and headers, the
    Content-Length of the GET included, are those of the GET, as RFC 9110 asks).

    FastAPI routes answer only the methods they declare, so without this every
    GET route (and Gradio's) would answer HEAD with 405 or 404. A streaming body
    is cut off after its first chunk: the app sees a disconnected client."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = False

        async def head_only(message: dict) -> None:
            nonlocal done
            if done:
                raise OSError("HEAD: the response is complete")  # a streaming body stops here
            if message["type"] == "http.response.body":
                done = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        async def disconnect_when_done() -> dict:
            return {"type": "http.disconnect"} if done else await receive()

        try:
            await self.app({**scope, "method": "GET"}, disconnect_when_done, head_only)
        except (OSError, ClientDisconnect):  # Starlette turns a cut stream's OSError into the latter
            if not done:
                raise


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """CORSMiddleware settings for `--cors-origins`. With no origins every
    cross-origin request is refused, Gradio's routes included (Gradio adds its
    own, looser policy only when the parent app has no CORSMiddleware)."""
    return {
        "allow_origins": list(origins),
        "allow_methods": CORS_METHODS,
        "allow_headers": CORS_REQUEST_HEADERS,
        "expose_headers": CORS_EXPOSED_HEADERS,
        # Tokens travel in the Authorization header, never in cookies.
        "allow_credentials": False,
        "max_age": 600,
    }


__all__ = ["CORSMiddleware", "HeadAsGet", "cors_options"]
