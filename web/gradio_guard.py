"""Gradio's event routes, checked before Gradio sees them: an unknown event or session
is a 4xx and one log line, not a 500 with a `KeyError` traceback, and a session is
its login's alone."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse

from web.body_limit import replaying
from web.gradio_sessions import SessionOwners, session_of
from web.ui_images import NamespaceOf

log = logging.getLogger(__name__)

PREFIX = "/gradio_api/"
# Routes that name an event in their path (`run/<api name>`, ...), and the one that
# names it only in its body (`queue/join`, by fn_index).
NAMED = ("run/", "api/", "call/v2/", "call/")
JOIN = "queue/join"
DATA = "queue/data"
# Gradio's hot-reload notifications: an event stream that never ends, polling every
# 50 ms, for a development mode this server never runs in.
RELOAD = "dev/reload"
# Gradio's file upload, open to every caller whether or not the page takes a file.
UPLOADS = ("upload", "upload_progress")


class GradioGuard:
    """ASGI middleware in front of Gradio's routes.

    - `queue/join`, `run/<name>`, `api/<name>`, `call/<name>`: an `fn_index` that is
      no event of the page, or a name that is no API of it, gets 404 naming it.
    - `dev/reload` gets 404: its stream would stay open for ever, for nothing.
    - `upload` and `upload_progress` get 404 unless the page has a component that
      takes a file (Gradio kept anyone's uploads for an hour, readable by others).
    - `queue/data?session_hash=<h>` for a session with nothing pending gets 404
      (Gradio raised inside its stream and logged a traceback on every request).
    - A request naming a session (in its path, query or JSON body) that another
      login (`namespace_of`) used first gets 403 (`SessionOwners`).

    Bodies are small (the body limit, outside, has read them already), so this
    reads the JSON once and hands the same bytes on.
    """

    def __init__(self, app: Any, blocks: Any, namespace_of: NamespaceOf) -> None:
        self.app = app
        self.blocks = blocks
        self.namespace_of = namespace_of
        # Twice Gradio's own bound on sessions with state: a binding outlives its state.
        self.owners = SessionOwners(blocks, capacity=2 * blocks.state_session_capacity)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        route = path[len(PREFIX) :].rstrip("/")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if route == RELOAD:
            await _refuse(404, "no reload mode: this server does not reload its code", scope, receive, send)
            return
        if route in UPLOADS and not takes_files(self.blocks):
            log.info("gradio: %s refused: the page takes no files", route)
            await _refuse(404, "this page takes no file uploads", scope, receive, send)
            return
        if scope["method"] == "GET" and route == DATA:
            session = (query.get("session_hash") or [""])[-1]
            if session not in self.blocks._queue.pending_messages_per_session:
                log.info("gradio: queue/data for a session with nothing pending")
                await _refuse(404, "no such session, or nothing pending for it", scope, receive, send)
                return
        body = None
        if scope["method"] == "POST" and b"json" in dict(scope["headers"]).get(b"content-type", b""):
            body, receive = await _read(receive)
        if scope["method"] == "POST" and (route == JOIN or route.startswith(NAMED)):
            if body is None:
                body, receive = await _read(receive)
            problem = self._problem(route, body)
            if problem is not None:
                log.info("gradio: %s refused: %s", route.split("/", 1)[0], problem)
                await _refuse(404, problem, scope, receive, send)
                return
        session = session_of(scope["method"], route, query, body)
        if session is not None and not self.owners.admits(session, self.namespace_of(Request(scope))):
            log.info("gradio: %s refused: the session is another login's", route.split("/", 1)[0])
            message = "this session belongs to another login, or has expired; reload the page"
            await _refuse(403, message, scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _problem(self, route: str, body: bytes) -> str | None:
        try:
            fields = json.loads(body) if body else {}
        except ValueError:
            return None  # Gradio's own 422 says what is wrong with it
        fn_index = fields.get("fn_index") if isinstance(fields, dict) else None
        fns = self.blocks.fns
        if fn_index is not None:
            if not isinstance(fn_index, int) or isinstance(fn_index, bool) or fn_index not in fns:
                return f"fn_index {str(fn_index)[:20]!r} is no event of this page"
            return None
        if route == JOIN:
            return None
        name = next(route[len(p) :] for p in NAMED if route.startswith(p)).split("/", 1)[0]
        if not any(fn.api_name == name for fn in fns.values()):
            return f"no API named {name[:40]!r}; see /gradio_api/info"
        return None


def takes_files(blocks: Any) -> bool:
    """Whether any component of the page takes a file from the browser: one with an
    `upload` event (Image, File, Gallery, Audio, ...) or a multimodal textbox that is
    interactive, by its own setting or, unset, as Gradio decides it: by being the
    input of an event."""
    inputs = {id(block) for fn in blocks.fns.values() for block in fn.inputs}
    for block in blocks.blocks.values():
        events = {str(event) for event in getattr(block, "EVENTS", ())}
        if "upload" not in events and type(block).__name__ != "MultimodalTextbox":
            continue
        interactive = getattr(block, "interactive", None)
        if interactive or (interactive is None and id(block) in inputs):
            return True
    return False


async def _read(receive: Any) -> tuple[bytes, Any]:
    """The whole body, and a `receive` that hands it on once, then the server's."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, replaying(body, receive)


async def _refuse(status: int, detail: str, scope: dict, receive: Any, send: Any) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
