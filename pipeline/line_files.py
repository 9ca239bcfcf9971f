"""The one reader of the service's line files: do-not-cache patterns, API keys and
prewarm prompt lists share its rules (UTF-8; blank lines and lines whose first
non-blank character is # are skipped; errors name the file and the line)."""

from __future__ import annotations

import re
from pathlib import Path


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every line that is neither blank nor a comment, as
    written (the caller strips or splits). Raises ValueError "cannot read PATH: why"
    when the file cannot be read or is not UTF-8."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [
        (number, line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def read_patterns(path: Path) -> list[re.Pattern[str]]:
    """Compile a do-not-cache file: one regular expression a line, matched without
    regard to case. Raises ValueError naming the bad line."""
    patterns = []
    for number, line in read_lines(path):
        try:
            patterns.append(re.compile(line.strip(), re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"{path} line {number}: {exc}") from None
    return patterns
