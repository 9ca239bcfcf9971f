"""The Create tab's LoRA picker: up to limits.MAX_LORAS rows of a LoRA and its scale.

The rows list what `/api/info` lists (GenerationService.lora_listing: the files
under `--lora-dir`, and the demo LoRA with the tiny model), set when the page
loads; the picker stays hidden while there is none. A row left at "None" names
nothing. What is picked goes with the generation as the request's `loras`
(pipeline/lora.py), so the image's cache key holds each LoRA's content hash and
scale; an unknown name (a file removed since the page loaded) or a LoRA picked
twice is the generation's error, said in the page's notice. An image's settings
put back into the form (history, "Use these settings", PNG Info) set the rows to
its LoRAs, and the rows it does not use to None.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipeline import limits
from pipeline.service import GenerationService
from web.errors import EXPECTED
from web.ui_text import I18N, language_of, say

log = logging.getLogger(__name__)

NONE = ""  # the value of a row that names no LoRA
SCALE_STEP = 0.05


@dataclass
class LoraPicker:
    """The picker's components: its box (hidden while no LoRA can be used), and a
    name and a scale for each of its limits.MAX_LORAS rows."""

    box: gr.Accordion
    names: list[gr.Dropdown]
    scales: list[gr.Slider]

    @property
    def components(self) -> list[Any]:
        """Each row's name then scale: the order of `values` and `picker_values`."""
        return [c for pair in zip(self.names, self.scales, strict=True) for c in pair]

    def specs(self, inputs: dict[Any, Any]) -> list[dict[str, Any]]:
        """The request's `loras` from an event's inputs (a dict by component): the
        rows that name a LoRA, in order."""
        return picked([inputs[c] for c in self.components])


def lora_picker() -> LoraPicker:
    """Build the picker (inside the Create tab's form column): an accordion, open,
    of limits.MAX_LORAS rows, each a labelled dropdown and scale slider."""
    names, scales = [], []
    with gr.Accordion(I18N("loras"), open=True, visible=False, elem_id="loras") as box:
        for i in range(1, limits.MAX_LORAS + 1):
            with gr.Row(equal_height=True):
                names.append(
                    gr.Dropdown(
                        [("—", NONE)],
                        value=NONE,
                        label=I18N(f"lora_{i}"),
                        elem_id=f"lora-{i}",
                        scale=3,
                        min_width=140,
                    )
                )
                scales.append(
                    gr.Slider(
                        -limits.MAX_LORA_SCALE,
                        limits.MAX_LORA_SCALE,
                        value=limits.DEFAULT_LORA_SCALE,
                        step=SCALE_STEP,
                        label=I18N(f"lora_scale_{i}"),
                        elem_id=f"lora-{i}-scale",
                        scale=2,
                        min_width=140,
                    )
                )
    return LoraPicker(box=box, names=names, scales=scales)


def picked(values: list[Any]) -> list[dict[str, Any]]:
    """`[{name, scale}]` of the rows (name, scale, name, scale, ...) that name a LoRA.
    A scale that is no finite number is passed on as it is, for the request's
    validation to refuse by name."""
    out = []
    for name, scale in zip(values[::2], values[1::2], strict=True):
        if isinstance(name, str) and name != NONE:
            number = scale if isinstance(scale, int | float) else limits.DEFAULT_LORA_SCALE
            out.append({"name": name, "scale": float(number)})
    return out


def picker_values(loras: Any) -> tuple[Any, ...]:
    """The rows' values (name, scale, ...) for an image's `loras` (history entry params,
    or PNG Info): its LoRAs first, then None at the default scale."""
    rows = [(lora["name"], lora["scale"]) for lora in (loras or [])][: limits.MAX_LORAS]
    rows += [(NONE, limits.DEFAULT_LORA_SCALE)] * (limits.MAX_LORAS - len(rows))
    return tuple(v for row in rows for v in row)


def clean_loras(raw: Any) -> list[dict[str, Any]] | None:
    """An entry's `loras` from browser storage (anything at all): the list of
    `{name, scale}` it holds, or None when it is not one."""
    if raw is None:
        return []  # (entries kept before LoRAs were) have none
    if not isinstance(raw, list) or len(raw) > limits.MAX_LORAS:
        return None
    out = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        scale = item.get("scale") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name or isinstance(scale, bool):
            return None
        if not isinstance(scale, int | float) or not math.isfinite(scale):
            return None
        out.append({"name": name, "scale": float(scale)})
    return out


def lora_choices(service: GenerationService, picker: LoraPicker) -> Any:
    """The page's load event: every row's choices (None, then each LoRA that can be
    used), and the picker shown when there is one. A model that is not there yet or
    failed keeps it hidden (the page says why elsewhere)."""

    async def choices(request: gr.Request) -> tuple[Any, ...]:
        try:
            listed = [lora["name"] for lora in await service.lora_listing()]
        except EXPECTED as exc:
            log.info("the LoRA picker stays hidden: %s", exc)
            listed = []
        options = [(say(language_of(request), "lora_none"), NONE)] + [(n, n) for n in listed]
        rows = tuple(gr.Dropdown(choices=options) for _ in picker.names)
        return (gr.Accordion(visible=bool(listed)), *rows)

    return choices
