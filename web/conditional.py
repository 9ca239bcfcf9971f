"""Conditional and partial GETs of a stored image (RFC 9110 sections 13 and 14):
`If-Match`, `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since`, `Range`
and `If-Range`, over bytes held in memory.

A stored image never changes under its key, so its ETag is the key (strong) and
its `Last-Modified` the time it was made (`Entry.meta["made"]`, whole seconds;
entries made before that field existed have none, and their date conditions are
ignored, as RFC 9110 asks when a resource has no modification date)."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import formatdate, parsedate_to_datetime

from fastapi.responses import Response

# The Entry.meta field holding when the image was made (seconds since the epoch).
MADE = "made"


def http_date(epoch_s: float) -> str:
    """IMF-fixdate, as Last-Modified and If-Range dates are written."""
    return formatdate(epoch_s, usegmt=True)


def _parse_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP date, or None if absent or not a date
    (RFC 9110: an invalid date in a condition is ignored)."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or a list of tags compared weakly (`W/"k"` matches `"k"`)."""
    if if_none_match is None:
        return False
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _tags(if_none_match))


def _strong_match(if_match: str, etag: str) -> bool:
    # If-Match compares strongly: a weak tag never matches (RFC 9110 13.1.1).
    return any(tag in ("*", etag) for tag in _tags(if_match))


def byte_range(header: str, size: int) -> tuple[int, int] | str | None:
    """The one range of `Range: bytes=...` as (first, last) inclusive; None when the
    header is to be ignored (not bytes, malformed, or several ranges: RFC 9110 lets
    a server answer those with the whole image); "unsatisfiable" when it lies past
    the end (416)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash or not (first_s.isdigit() or first_s == "") or not (last_s.isdigit() or last_s == ""):
        return None
    if first_s == "":  # a suffix: the last N bytes
        if last_s == "" or int(last_s) == 0:
            return None if last_s == "" else "unsatisfiable"
        return max(size - int(last_s), 0), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid: ignored
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


def conditional_response(
    data: bytes, media_type: str, headers: dict[str, str], asked: Mapping[str, str], made: float | None
) -> Response:
    """The response to a GET (or HEAD) of `data` whose validators are
    `headers["ETag"]` and `made`: 412 when `If-Match` or `If-Unmodified-Since`
    fails, 304 when `If-None-Match` (or, without it, `If-Modified-Since`) says
    the client's copy is current, 206 with `Content-Range` for one satisfiable
    range (unless `If-Range` names another version), 416 for one past the end,
    else 200 with every byte. `headers` are sent with each of them."""
    etag = headers["ETag"]
    headers = {**headers, "Accept-Ranges": "bytes"}
    if made is not None:
        headers["Last-Modified"] = http_date(made)
    made_s = int(made) if made is not None else None
    # 1-2: the client's preconditions for acting on this version (RFC 9110 13.2.2).
    if_match = asked.get("if-match")
    if if_match is not None:
        if not _strong_match(if_match, etag):
            return Response(status_code=412, headers=headers)
    else:
        unmodified_since = _parse_date(asked.get("if-unmodified-since"))
        if unmodified_since is not None and made_s is not None and made_s > unmodified_since:
            return Response(status_code=412, headers=headers)
    # 3-4: is the client's copy current?
    if_none_match = asked.get("if-none-match")
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
    else:
        modified_since = _parse_date(asked.get("if-modified-since"))
        if modified_since is not None and made_s is not None and made_s <= modified_since:
            return Response(status_code=304, headers=headers)
    # 5: a part of it.
    wanted = asked.get("range")
    if wanted is not None and _range_applies(asked.get("if-range"), etag, headers.get("Last-Modified")):
        part = byte_range(wanted, len(data))
        if part == "unsatisfiable":
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
        if isinstance(part, tuple):
            first, last = part
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return Response(data[first : last + 1], status_code=206, media_type=media_type, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def _range_applies(if_range: str | None, etag: str, last_modified: str | None) -> bool:
    """If-Range: the range is for this version only when it names our strong ETag,
    or exactly our Last-Modified date; otherwise the whole image is sent."""
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag
    return last_modified is not None and if_range == last_modified
