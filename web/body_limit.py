"""A cap on request bodies, in size and in time, for every route: the API's, Gradio's
and any other."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from web.openai_api import openai_error

# The largest valid request is two 2,000-character prompts of characters outside
# the BMP: 16 KB as UTF-8, 48 KB if a client escapes each as a `\ud83d\ude00` pair;
# a Gradio event carries the same fields plus a few hundred bytes. Anything larger
# is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
# 64 KB in 10 s is 6.5 KB/s: any real client, however slow its network, is done sooner.
BODY_TIMEOUT_S = 10.0
# A body must advance by this much within each body timeout (see BodyLimit._read).
RATE_BYTES = 64 * 1024

log = logging.getLogger(__name__)


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
    """ASGI middleware: 413 for a request body over `max_bytes`, and 408 for one not
    whole within `timeout_s` of the request head (a longer one: not advancing by
    64 KB within each `timeout_s`), on every route (the API's, Gradio's and any
    other) but those `larger` names by exact path, which may take that many bytes
    (the image upload routes: web/uploads.py).

    The size is judged by Content-Length and by counting what arrives (a chunked
    body has no length). The time covers every way a client can hold a connection
    after its head: a declared body that never comes, one sent a byte at a time,
    and `Expect: 100-continue` (the server's `100 Continue` goes out on the first
    read, here) never followed by the body. A request refused for time has its
    connection closed (`Connection: close`).

    The body is read whole before the route runs (it is at most the limit), so a
    refused request never reaches a route and nothing of it is kept; the route
    then reads it from memory, and later `receive` calls (to see a disconnect) go
    to the server as before.
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int = MAX_BODY_BYTES,
        timeout_s: float = BODY_TIMEOUT_S,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.larger = dict(larger or {})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(413, self.too_large(scope["path"]), scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                body = await self._read(receive, deadline, limit)
        except TimeoutError:
            log.info("closing a connection: request body not whole within %g s", self.timeout_s)
            message = f"request body not whole within {self.timeout_s:g} s of the request head"
            await self._refuse(408, message, scope, receive, send)
            return
        if body is None:
            return  # gone before its body arrived: nobody to answer
        if len(body) > limit:
            await self._refuse(413, self.too_large(scope["path"]), scope, receive, send)
            return
        await self.app(scope, replaying(body, receive), send)

    async def _read(self, receive: Any, deadline: asyncio.Timeout, limit: int) -> bytes | None:
        """The body, or its first `limit` + 1 bytes if longer; None if the client left.

        Each `RATE_BYTES` that arrive move the `deadline` to `timeout_s` from then: a
        body of up to 64 KB must come whole within `timeout_s`, a larger one (a
        route allowed more) at no less than 64 KB per `timeout_s` on average."""
        chunks: list[bytes] = []
        seen = 0
        mark = RATE_BYTES
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            seen += len(chunk)
            if seen >= mark:
                mark = (seen // RATE_BYTES + 1) * RATE_BYTES
                deadline.reschedule(asyncio.get_running_loop().time() + self.timeout_s)
            if seen > limit or not message.get("more_body", False):
                return b"".join(chunks)

    def too_large(self, path: str) -> str:
        if path in self.larger:
            return f"request body over {self.larger[path]} bytes, the limit of an image upload"
        return f"request body over {self.max_bytes} bytes; a generation request is a few KB"

    async def _refuse(self, status: int, message: str, scope: dict, receive: Any, send: Any) -> None:
        code = "request_too_large" if status == 413 else "request_timeout"
        if scope["path"].startswith("/v1/"):  # OpenAI's clients read OpenAI's error shape
            response = openai_error(status, message, code=code)
        else:
            response = JSONResponse({"detail": message}, status_code=status)
        if status == 408:
            # Whatever of the body is still to come is never read: close. (A 413 leaves
            # the connection open: the server reads and drops the rest, so a client
            # still sending its body is not reset before it reads the answer.)
            response.headers["connection"] = "close"
        await response(scope, receive, send)
