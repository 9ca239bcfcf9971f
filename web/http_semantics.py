"""HTTP behaviour shared by every route, Gradio's included: HEAD answered like GET
without a body, 405 with `Allow` for a method a route does not take, and the
cross-origin (CORS) policy of `--cors-origins`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Mount

# What a browser script on an allowed origin may send and read. Besides ours:
# MCP's browser clients send their protocol version, session id and (resuming a
# stream) Last-Event-ID after `initialize`; ranges and preconditions are for
# downloads of /images; the `openai` npm package sends `x-stainless-*` headers
# (its version, OS, runtime, retry count, ...), a set that grows between its
# releases, so the prefix is allowed (CorsHeaderPrefixes).
CORS_METHODS = ["GET", "HEAD", "POST", "DELETE", "OPTIONS"]
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-Namespace",
    "If-None-Match",
    "If-Match",
    "If-Modified-Since",
    "If-Range",
    "Range",
    "Mcp-Protocol-Version",
    "Mcp-Session-Id",
    "Last-Event-ID",
]
CORS_REQUEST_HEADER_PREFIXES = ("x-stainless-",)
# The methods a 405's Allow can name (HEAD follows GET; OPTIONS is CORS's).
PROBED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
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


class MethodNotAllowed:
    """ASGI middleware: a request whose path one of our routes serves, with a method
    none of them takes, gets 405 naming the methods in `Allow` (RFC 9110 15.5.6).

    Starlette's router would say so itself, but the UI is mounted at `/` and takes
    every path, so without this a wrong method fell through to Gradio's 404. Mounts
    are left to answer for themselves; `routes` is read per request (the UI is
    mounted after this is added)."""

    def __init__(self, app: Any, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            allowed = self._allowed(scope)
            if allowed:
                detail = f"{scope['method']} is not allowed here; use {', '.join(allowed)}"
                response = JSONResponse(
                    {"detail": detail}, status_code=405, headers={"Allow": ", ".join(allowed)}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, scope: dict) -> list[str]:
        """The methods our routes take at this path, when they do not take this one.

        Asked of each route through `matches` with each method in turn: FastAPI's
        included routers are routes whose methods are not listed anywhere public."""
        ours = [route for route in self.routes if not isinstance(route, Mount)]
        matches = [route.matches(scope)[0] for route in ours]
        if Match.FULL in matches or Match.PARTIAL not in matches:
            return []
        allowed = {
            method
            for method in PROBED_METHODS
            if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in ours)
        }
        if "GET" in allowed:
            allowed.add("HEAD")  # HeadAsGet serves it
        return sorted(allowed)


class CorsHeaderPrefixes:
    """ASGI middleware around CORSMiddleware: request headers named by a prefix
    (CORS_REQUEST_HEADER_PREFIXES) are allowed as if listed. A preflight asking
    for them reaches CORSMiddleware without them, and when it is allowed (a listed
    origin) they are named back in `Access-Control-Allow-Headers`; other origins
    are refused as before (400).

    A wrapper, not a subclass: Gradio leaves CORS to the parent app only when one
    of its middlewares is exactly CORSMiddleware."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or scope["method"] != "OPTIONS" or "access-control-request-method" not in headers:
            await self.app(scope, receive, send)
            return
        asked = headers.get("access-control-request-headers") or ""
        names = [name.strip().lower() for name in asked.split(",") if name.strip()]
        prefixed = [name for name in names if name.startswith(CORS_REQUEST_HEADER_PREFIXES)]
        if not prefixed:
            await self.app(scope, receive, send)
            return
        listed = ", ".join(name for name in names if name not in prefixed)
        raw = [(k, v) for k, v in scope["headers"] if k != b"access-control-request-headers"]
        if listed:
            raw.append((b"access-control-request-headers", listed.encode("latin-1")))

        async def name_them_back(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                response = MutableHeaders(raw=message["headers"])
                allowed = response.get("access-control-allow-headers")
                response["access-control-allow-headers"] = ", ".join(filter(None, [allowed, *prefixed]))
            await send(message)

        await self.app({**scope, "headers": raw}, receive, name_them_back)


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """CORSMiddleware settings for `--cors-origins` (with CorsHeaderPrefixes around it). With no origins every
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


__all__ = ["CORSMiddleware", "CorsHeaderPrefixes", "HeadAsGet", "MethodNotAllowed", "cors_options"]
