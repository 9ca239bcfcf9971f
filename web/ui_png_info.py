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
from web.ui_form import size_preset
from web.ui_layout import CreateTab
from web.ui_text import language_of, say

MAX_TEXT = 16_384  # characters of a parameters text the page sends (ours: prompts <= 2,000 each)


def png_reader(tab: CreateTab) -> Any:
    """The handler of `tab.png_read`: (parameters text) -> tab.settings, notice, parameters."""

    def read(text: Any, request: gr.Request) -> tuple[Any, ...]:
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
            gr.Markdown(say(lang, "png_read")),
            text[:MAX_TEXT],
        )

    return read
