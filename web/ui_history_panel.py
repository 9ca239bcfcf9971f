"""The history panel: each image captioned with its prompt, seed and time (in the
browser's time zone), a search over the prompts, and taking entries out (one, or
all). The entries themselves, and what browser storage keeps, are web/ui_history.py's.

An entry is named by (key, seed), as `merge` tells images apart; what the panel
lists is the history filtered by the search, so a click's index is an index into
that listing, never into the whole history.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from web.ui_history import Entry, path_of
from web.ui_images import UiImages, for_gallery
from web.ui_text import say

PROMPT_SHOWN = 60  # characters of the prompt in a caption (the whole of it is in the parameters)


def matching(entries: list[Entry], query: str | None) -> list[Entry]:
    """The entries whose prompt contains `query` (any case), or whose seed is it."""
    words = (query or "").strip().casefold()
    if not words:
        return entries
    return [
        e for e in entries if words in e["params"]["prompt"].casefold() or words == str(e["params"]["seed"])
    ]


def listing(images: UiImages, lang: str, tz: str | None, entries: list[Entry]) -> list[tuple[Any, str]]:
    """(path, caption) of each entry for the panel's gr.Gallery: 'prompt · seed 42 · 14:05'."""
    return [(for_gallery(path_of(images, e)), caption(lang, tz, e)) for e in entries]


def caption(lang: str, tz: str | None, entry: Entry) -> str:
    prompt = " ".join(entry["params"]["prompt"].split())
    if len(prompt) > PROMPT_SHOWN:
        prompt = prompt[: PROMPT_SHOWN - 1].rstrip() + "…"
    parts = [prompt, say(lang, "seed", seed=entry["params"]["seed"])]
    when = made_at(entry.get("at"), tz)
    return " · ".join([*parts, when] if when else parts)


def made_at(at: Any, tz: str | None, now: datetime | None = None) -> str:
    """'14:05' today, '2026-12-06 14:05' before, in the time zone `tz` (the browser's;
    UTC when it names none we know); '' without a time."""
    if not isinstance(at, int):
        return ""
    try:
        zone: Any = ZoneInfo(tz) if tz else timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        zone = timezone.utc
    try:
        made = datetime.fromtimestamp(at, zone)
    except (OverflowError, OSError, ValueError):
        return ""
    today = (now or datetime.now(zone)).astimezone(zone).date()
    return made.strftime("%H:%M" if made.date() == today else "%Y-%m-%d %H:%M")


def identity(entry: Entry) -> tuple[str, int]:
    return entry["key"], entry["params"]["seed"]


def without(history: list[Entry], picked: Any) -> list[Entry]:
    """The history less the entry `picked` names ((key, seed), as a list from a State)."""
    if not picked:
        return history
    key, seed = picked
    return [e for e in history if identity(e) != (key, seed)]
