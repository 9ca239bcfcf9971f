"""Keep prompts out of the access log: they are user data, and some must never be logged."""

from __future__ import annotations

import logging
import re

_PROMPT_PARAM = re.compile(r"(?<=[?&])((?:negative_)?prompt)=[^&\s]*")


class RedactPrompts(logging.Filter):
    """Replaces `prompt=...` and `negative_prompt=...` in uvicorn access-log lines
    with `prompt=<redacted>`. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "prompt=" in args[2]:
            record.args = (*args[:2], _PROMPT_PARAM.sub(r"\1=<redacted>", args[2]), *args[3:])
        return True
