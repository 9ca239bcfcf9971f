"""The UI's form checks: each field's problem said next to it, in the page's language.

The UI checks the form before it asks for a generation, so that a mistake is
shown beside the field that has it (and the images on the page stay); sizes are
not refused but snapped to the nearest valid one, and the note says so. What only
the service can tell (a prompt too long after normalisation, a busy queue, a
failed model) comes back as an exception; `explain` words it the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pipeline.engine import Engine
from pipeline.errors import GenerationFailed, JobCancelled, ModelUnavailable, RequestInvalid
from pipeline.limits import MAX_PROMPT_CHARS, MAX_SEED, MAX_SIZE, MIN_SIZE
from pipeline.request import check_text, snap_size
from web.ui_text import say

# The fields that have a note beside them in the UI.
NOTED = ("prompt", "negative_prompt", "width", "height", "seed", "steps", "guidance_scale", "batch_size")
# Resolution presets with their aspect ratio (width:height), and the other choice.
PRESETS = [
    ("1024x1024", "1:1"),
    ("1152x896", "9:7"),
    ("896x1152", "7:9"),
    ("1152x864", "4:3"),
    ("864x1152", "3:4"),
    ("1248x832", "3:2"),
    ("832x1248", "2:3"),
    ("1280x720", "16:9"),
    ("720x1280", "9:16"),
    ("1344x576", "21:9"),
    ("576x1344", "9:21"),
]
PRESET_SIZES = [size for size, _ in PRESETS]
CUSTOM = "Custom"


@dataclass
class FormCheck:
    """The form's values as the request takes them, and a note for each field that
    needs one: `errors` stop the generation, `notes` only say what was adjusted."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def size_limits(engine: Engine) -> tuple[int, int]:
    """The sizes the served model takes (the widest bounds until it is known)."""
    identity = engine.identity
    return (identity.min_size, identity.max_size) if identity else (MIN_SIZE, MAX_SIZE)


def size_preset(width: float | None, height: float | None) -> str:
    """The preset of a size, or CUSTOM."""
    try:
        size = f"{int(width or 0)}x{int(height or 0)}"
    except (TypeError, ValueError, OverflowError):
        return CUSTOM
    return size if size in PRESET_SIZES else CUSTOM


def snap(lang: str, value: float | None, low: int, high: int) -> tuple[int | None, str]:
    """A size as the UI keeps it: the nearest multiple of 16 within `low..high`, and a
    note when that is not what was typed ('' when it was). None stays None."""
    if value is None or not math.isfinite(value):
        return None, ""
    typed = round(value)
    snapped = snap_size(typed, low, high)
    if snapped == typed:
        return snapped, ""
    if typed < low:
        return snapped, say(lang, "clamped_low", value=snapped)
    if typed > high:
        return snapped, say(lang, "clamped_high", value=snapped)
    return snapped, say(lang, "snapped", value=snapped)


def check_form(lang: str, form: dict[str, Any], low: int, high: int, max_batch: int) -> FormCheck:
    """Check the UI's fields (prompt, negative_prompt, seed, width, height, steps,
    guidance_scale, batch_size) with sizes limited to `low..high`."""
    check = FormCheck()
    for name in ("prompt", "negative_prompt"):
        text = form.get(name) or ""
        check.values[name] = text
        try:
            check_text(name, text)
        except ValueError as exc:
            if len(text) > MAX_PROMPT_CHARS:
                check.errors[name] = say(
                    lang,
                    "too_long",
                    field=say(lang, f"field_{name}"),
                    length=len(text),
                    limit=MAX_PROMPT_CHARS,
                )
            else:
                check.errors[name] = say(lang, "invalid", detail=str(exc))
    if not check.errors.get("prompt") and not check.values["prompt"].strip():
        check.errors["prompt"] = say(lang, "prompt_empty")

    for name in ("width", "height"):
        value, note = snap(lang, _number(form.get(name)), low, high)
        if value is None:
            check.errors[name] = say(lang, "not_number", field=say(lang, f"field_{name}"))
        else:
            check.values[name] = value
            if note:
                check.notes[name] = note

    seed = _number(form.get("seed"))
    if seed is None or seed != int(seed) or (seed != -1 and not 0 <= seed <= MAX_SEED):
        check.errors["seed"] = say(lang, "seed_range", high=MAX_SEED)
    else:
        check.values["seed"] = int(seed)

    for name, lo, hi, whole in (
        ("steps", 1, 50, True),
        ("guidance_scale", 0, 20, False),
        ("batch_size", 1, max_batch, True),
    ):
        number = _number(form.get(name))
        if number is None or not lo <= number <= hi:
            check.errors[name] = say(lang, "out_of_range", field=say(lang, f"field_{name}"), low=lo, high=hi)
        else:
            check.values[name] = int(number) if whole else float(number)
    return check


def explain(lang: str, exc: BaseException) -> tuple[str | None, str]:
    """(the field to note it beside, or None for the page's notice; the text) for an
    exception a generation raised."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else None
        detail = str(first.get("msg", "")).removeprefix("Value error, ")
        return (name if name in NOTED else None), say(lang, "invalid", detail=detail)
    if isinstance(exc, RequestInvalid):
        return (exc.field if exc.field in NOTED else None), say(lang, "invalid", detail=exc.message)
    if isinstance(exc, JobCancelled):
        return None, say(lang, "cancelled")
    if isinstance(exc, ModelUnavailable):
        return None, say(lang, "model_unavailable", reason=str(exc))
    if isinstance(exc, GenerationFailed):
        return None, say(lang, "generation_failed", reason=str(exc))
    raise exc


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
