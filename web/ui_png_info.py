"""PNG Info: a PNG's generation parameters read back into the form (issue 26 item 11).

The page reads the chosen or dropped file itself (static/ui.js: the `parameters`
text chunk, tEXt, zTXt or iTXt, as we and A1111 write it) and sends only that
text, at most MAX_TEXT characters: the image never leaves the browser, and the
server's 64 KB body limit (Gradio's upload route included) never meets it.
`read` parses it (pipeline/png_info.py) and sets the fields it names; the
others keep their values. Steps and guidance are brought into the form's range
(another tool's 30 steps or CFG 7 are beyond ours); a size is snapped when
Generate checks it, and said beside its field. Never raises: a file with no
parameters is said in the notice.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipeline import limits
from pipeline.png_info import parse_parameters
from pipeline.service import GenerationService
from web.errors import EXPECTED
from web.ui_form import size_preset
from web.ui_layout import CreateTab
from web.ui_lora import picker_values
from web.ui_text import language_of, say

MAX_TEXT = 16_384  # characters of a parameters text the page sends (ours: prompts <= 2,000 each)


def png_reader(tab: CreateTab, service: GenerationService) -> Any:
    """The handler of `tab.png_read`: (parameters text) -> tab.settings, notice, parameters.
    The text's LoRAs that `service` has go into the LoRA picker; the notice names the
    others (left out)."""

    async def read(text: Any, request: gr.Request) -> tuple[Any, ...]:
        lang = language_of(request)
        fields = parse_parameters(text[:MAX_TEXT]) if isinstance(text, str) and text.strip() else {}
        if not fields.get("prompt"):
            unchanged = tuple(gr.skip() for _ in tab.settings)
            return (*unchanged, gr.Markdown(say(lang, "png_none")), gr.skip())

        def given(name: str, low: float | None = None, high: float | None = None) -> Any:
            if name not in fields:
                return gr.skip()
            value = fields[name]
            return value if low is None or high is None else min(high, max(low, value))

        loras, missing = await _available(service, fields.get("loras", []))
        said = say(lang, "png_read")
        if missing:
            said += " " + say(lang, "png_lora_missing", names=", ".join(missing))
        width, height = fields.get("width"), fields.get("height")
        preset = size_preset(width, height) if width and height else gr.skip()
        return (
            fields["prompt"],
            fields.get("negative_prompt", ""),  # none in the text: the image had none
            given("seed", 0, limits.MAX_SEED),
            preset,
            given("width"),
            given("height"),
            given("steps", limits.MIN_STEPS, limits.MAX_STEPS),
            given("guidance_scale", 0.0, limits.MAX_GUIDANCE),
            gr.skip(),  # the prompt normalisation: not in the text
            *picker_values(loras),  # none in the text: the image had none
            gr.Markdown(said),
            text[:MAX_TEXT],
        )

    return read


async def _available(service: GenerationService, loras: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
    """(the LoRAs of `loras` this server has, the names of the others)."""
    if not loras:
        return [], []
    try:
        listed = {lora["name"] for lora in await service.lora_listing()}
    except EXPECTED:
        listed = set()
    return [x for x in loras if x["name"] in listed], [x["name"] for x in loras if x["name"] not in listed]
