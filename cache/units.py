"""Human-readable sizes ("20GiB", "500MB") and durations ("7d", "12h", "1d12h")."""

from __future__ import annotations

import re

from pydantic import ByteSize, TypeAdapter, ValidationError

_BYTES = TypeAdapter(ByteSize)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str | int) -> int:
    """Bytes in `text`: a plain number of bytes or a number with a unit (KB, MiB, GiB, ...,
    decimal or binary). Raises ValueError saying what a valid size looks like."""
    try:
        size = int(_BYTES.validate_python(text))
    except ValidationError:
        raise ValueError(f"{text!r} is not a size; write e.g. 20GiB, 500MB or 1048576") from None
    if size < 0:
        raise ValueError(f"{text!r} is negative; a size is 0 or more bytes")
    return size


def parse_duration(text: str | float) -> float:
    """Seconds in `text`: a plain number of seconds, or parts like 7d, 12h, 30m, 45s, 2w
    (combined: 1d12h). Raises ValueError saying what a valid duration looks like."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        compact = text.strip().lower().replace(" ", "")
        parts = _DURATION_PART.findall(compact)
        if not compact or "".join(n + u for n, u in parts) != compact:
            raise ValueError(f"{text!r} is not a duration; write e.g. 7d, 12h, 30m, 1d12h or 3600")
        seconds = sum(float(n) * _SECONDS[u] for n, u in parts)
    if seconds < 0:
        raise ValueError(f"{text!r} is negative; a duration is 0 or more seconds")
    return seconds


def format_size(size: int) -> str:
    return ByteSize(size).human_readable()


def format_duration(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f}{unit}"
    return f"{seconds:.0f}s"
