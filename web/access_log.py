"""Keep prompts out of the access log: they are user data, and some must never be logged."""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

REDACTED = "<redacted>"


def redact_query(target: str) -> str:
    """`target` (a path with its raw query string) with the value of every parameter
    whose name mentions "prompt" replaced by `<redacted>`.

    Names are judged as the server reads them, percent-decoded and `+` as a space
    (`%70rompt` is `prompt`), and case-insensitively, so no spelling that reaches a
    route, and none that a route rejects with 422, keeps its value in the log.
    """
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if eq and "prompt" in unquote_plus(name).casefold():
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class RedactPrompts(logging.Filter):
    """Redacts prompts in uvicorn access-log lines (see `redact_query`). Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True
