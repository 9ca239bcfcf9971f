"""Keep prompts and session secrets out of the access log: prompts are user data (some
must never be logged), and a Gradio session hash is a key to a session's state."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

REDACTED = "<redacted>"
# Gradio's path parts that are a session hash (`heartbeat/<hash>`, `stream/<hash>/...`).
_SESSION_IN_PATH = re.compile(r"(/gradio_api/(?:heartbeat|stream)/)[^/?]+")
# `sig`: a signed image URL's signature lets anyone fetch the image for an hour.
_SECRET_NAMES = ("prompt", "session_hash", "sig")


def redact_query(target: str) -> str:
    """`target` (a path with its raw query string) with the value of every parameter
    whose name mentions "prompt", "session_hash" or "sig" replaced by `<redacted>`, and
    a session hash in a Gradio path too.

    Names are judged as the server reads them, percent-decoded and `+` as a space
    (`%70rompt` is `prompt`), and case-insensitively, so no spelling that reaches a
    route keeps its value in the log (a rejected request: `redact_rejected`).
    """
    target = _SESSION_IN_PATH.sub(rf"\g<1>{REDACTED}", target)
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if eq and any(secret in unquote_plus(name).casefold() for secret in _SECRET_NAMES):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


def redact_rejected(target: str, status: int) -> str:
    """What is logged of a request the server refused (`status` 400 or above): its
    query string fully redacted, and for a 404 its path cut after the first part.

    The server did not understand a refused request's parameters (`%2570rompt=`,
    `pro%20mpt=`, `a=1%26prompt%3D...`), and a 404's path is no route of ours
    (or an image no longer there); it cannot tell which of their words are a
    prompt, so it keeps none of them.
    """
    path, sep, _ = target.partition("?")
    first, slash, rest = path.lstrip("/").partition("/")
    shown = f"/{first}/{REDACTED}" if status == 404 and slash and rest else redact_query(path)
    return f"{shown}?{REDACTED}" if sep else shown


class RedactPrompts(logging.Filter):
    """Redacts prompts and session hashes in uvicorn access-log lines (see
    `redact_query`), and a refused request's parameters (see `redact_rejected`).
    Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, target, http version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5 and isinstance(args[2], str):
            status = args[4]
            rejected = isinstance(status, int) and status >= 400
            target = redact_rejected(args[2], status) if rejected else redact_query(args[2])
            record.args = (*args[:2], target, *args[3:])
        return True
