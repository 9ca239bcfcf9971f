"""The UI's form: its checks, each field's problem said next to it in the page's
language, its size presets, and an image's parameters put back into it.

The UI checks the form before it asks for a generation, so that a mistake is
shown beside the field that has it (and the images on the page stay); sizes are
not refused but snapped to the nearest valid one, and the note says so. What only
the service can tell (a prompt too long after normalisation, a busy queue, a
failed model) comes back as an exception; `explain` words it from the shared
failure table (web/errors.py). The limits are pipeline/limits.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from pydantic import ValidationError

from pipeline import limits
from pipeline.engine import Engine
from pipeline.errors import RequestInvalid, validation_message
from pipeline.request import check_text, snap_size
from web.errors import failure_of
from web.ui_lora import picker_values
from web.ui_text import language_of, say

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
    return (identity.min_size, identity.max_size) if identity else (limits.MIN_SIZE, limits.MAX_SIZE)


def size_preset(width: float | None, height: float | None) -> str:
    """The preset of a size, or CUSTOM."""
    try:
        size = f"{int(width or 0)}x{int(height or 0)}"
    except (TypeError, ValueError, OverflowError):
        return CUSTOM
    return size if size in PRESET_SIZES else CUSTOM


def snap(lang: str, value: float | None, low: int, high: int) -> tuple[int | None, str]:
    """A size as the UI keeps it: the nearest multiple of SIZE_MULTIPLE within
    `low..high`, and a note when that is not what was typed ('' when it was). None
    stays None."""
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
    return snapped, say(lang, "snapped", value=snapped, multiple=limits.SIZE_MULTIPLE)


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
            if len(text) > limits.MAX_PROMPT_CHARS:
                check.errors[name] = say(
                    lang,
                    "too_long",
                    field=say(lang, f"field_{name}"),
                    length=len(text),
                    limit=limits.MAX_PROMPT_CHARS,
                )
            else:
                check.errors[name] = say(lang, "error_invalid_value", reason=str(exc))
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
    if seed is None or seed != int(seed) or (seed != limits.RANDOM_SEED and not 0 <= seed <= limits.MAX_SEED):
        check.errors["seed"] = say(lang, "seed_range", high=limits.MAX_SEED)
    else:
        check.values["seed"] = int(seed)

    for name, lo, hi, whole in (
        ("steps", limits.MIN_STEPS, limits.MAX_STEPS, True),
        ("guidance_scale", 0, limits.MAX_GUIDANCE, False),
        ("batch_size", 1, max_batch, True),
    ):
        number = _number(form.get(name))
        if number is None or not lo <= number <= hi:
            check.errors[name] = say(
                lang, "out_of_range", field=say(lang, f"field_{name}"), low=f"{lo:g}", high=f"{hi:g}"
            )
        else:
            check.values[name] = int(number) if whole else float(number)
    return check


def explain(lang: str, exc: BaseException) -> tuple[str | None, str]:
    """(the field to note it beside, or None for the page's notice; the text) for a
    ValidationError or a failure of web/errors.py's table (`error_<code>` in
    web/ui_text.py words each code)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else None
        return (name if name in NOTED else None), say(
            lang, "error_invalid_value", reason=validation_message(first)
        )
    name = exc.field if isinstance(exc, RequestInvalid) else None
    text = say(lang, f"error_{failure_of(exc).code}", reason=str(exc))
    return (name if name in NOTED else None), text


def preset_choices(lang: str) -> list[tuple[str, str]]:
    """The resolution dropdown's choices: each preset with its aspect ratio, and Custom."""
    return [(f"{size} ({ratio})", size) for size, ratio in PRESETS] + [(say(lang, "custom"), CUSTOM)]


def normalization_choices(lang: str) -> list[tuple[str, str]]:
    return [(say(lang, f"norm_{mode}"), mode) for mode in limits.NORMALIZATIONS]


def form_values(p: dict[str, Any]) -> tuple[Any, ...]:
    """The form's fields (as `CreateTab.settings` lists them) set to an image's parameters."""
    return (
        p["prompt"],
        p["negative_prompt"],
        p["seed"],
        size_preset(p["width"], p["height"]),
        p["width"],
        p["height"],
        p["steps"],
        p["guidance_scale"],
        p["prompt_normalization"],
        *picker_values(p.get("loras")),
    )


def preset_size(preset: str) -> tuple[Any, ...]:
    """A preset chosen: its width and height, and the size notes hidden."""
    hidden = field_note(None)
    if preset == CUSTOM:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    w, h = (int(v) for v in preset.split("x"))
    return w, h, hidden, hidden


def snapper(engine: Engine, name: str) -> Any:
    """On leaving the width or height box: the nearest valid size, and a note saying so."""

    def snap_on_blur(width: float | None, height: float | None, request: gr.Request) -> tuple[Any, Any, Any]:
        low, high = size_limits(engine)
        value, note = snap(language_of(request), width if name == "width" else height, low, high)
        if not note:
            # Unchanged: set nothing, or this answer could undo what was typed since.
            return gr.skip(), field_note(None), gr.skip()
        sizes = {"width": width, "height": height, name: value}
        return value, field_note(note), size_preset(sizes["width"], sizes["height"])

    return snap_on_blur


def field_note(text: str | None, error: bool = False) -> gr.Markdown:
    """The note beside a field: empty (it takes no room, static/style.css) or `text`;
    an `error` (what stops a generation, not what was adjusted) marks its field
    aria-invalid (static/ui.js)."""
    return gr.Markdown(
        text or "", elem_classes=["field-note", "field-error"] if error and text else ["field-note"]
    )


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
