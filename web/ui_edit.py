"""The UI's image tab: img2img and inpainting from the page, without Gradio's uploads.

Gradio's upload components write every file to its temp directory (through
`/gradio_api/upload`, under the 64 KB body limit besides), and an input image is
never written anywhere. So the tab is plain HTML (`edit_panel`) driven by the page's
own script (static/edit.js, in the page's head by `edit_head`): the file is read
in the browser, the mask painted on a canvas over it, and the form posted with
`fetch` to `/api/edit` (web/edit_api.py), which keeps the upload in memory. The
answer's image comes back inline (`response_format=b64_json`): with API keys,
`/images/<key>` needs a bearer token the page does not have, while `/api/edit`
takes the UI's own login session (web/auth.py `ui_or_caller_namespace`).

With `--controlnet` the chosen image can be sent as a control image instead (an
edge, depth or pose map the new image follows: `control_image`, its kind and scale);
without it that part of the form is disabled, and says which flag turns it on.
A LoRA and its scale can be chosen too (posted as `loras`): the LoRAs of
`--lora-dir` when the page was built, and the demo model's demo LoRA.

The words are English in the HTML and put in the browser's language by the
script (web/ui_text.py `EDIT_TEXT`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from pathlib import Path

import gradio as gr

from pipeline import limits
from pipeline.controlnet import CONTROL_KINDS, DEFAULT_CONTROL_SCALE, MAX_CONTROL_SCALE
from pipeline.image_input import DEFAULT_IMG2IMG_STRENGTH
from web.ui_text import EDIT_TEXT
from web.uploads import EDIT_PATH

STATIC = Path(__file__).resolve().parent.parent / "static"
SCRIPT, STYLE = STATIC / "edit.js", STATIC / "edit.css"
ACCEPT = "image/png,image/jpeg,image/webp"
BRUSH_PX = (4, 64, 24)  # min, max, default: in the image's own pixels


def edit_head() -> str:
    """static/edit.js (with its texts and the route it posts to) and static/edit.css,
    for the page's head."""
    script = SCRIPT.read_text(encoding="utf-8")
    script = script.replace("__EDIT_TEXT__", json.dumps(EDIT_TEXT, ensure_ascii=False))
    script = script.replace("__EDIT_PATH__", json.dumps(EDIT_PATH))
    return f"<style>\n{STYLE.read_text(encoding='utf-8')}</style>\n<script>\n{script}</script>"


def edit_panel(*, controlnet: bool, loras: list[str]) -> gr.HTML:
    """The tab's controls: each with a label (a `data-say` key of EDIT_TEXT), the
    result's status line a live region; the ControlNet part disabled unless the
    server has `--controlnet` (`controlnet`); the LoRA names `loras` to choose from."""
    say = EDIT_TEXT["en"]

    def text(key: str) -> str:
        return f'<span data-say="{key}">{escape(say[key])}</span>'

    low, high, brush = BRUSH_PX
    html = f"""
<div id="edit-panel">
  <div class="edit-column">
    <label for="edit-file">{text("file")}</label>
    <input type="file" id="edit-file" accept="{ACCEPT}" aria-describedby="edit-file-note">
    <p id="edit-file-note" class="edit-note">{text("file_note")}</p>
    <p id="edit-mask-label" class="edit-note">{text("mask")}</p>
    <div id="edit-stage" hidden>
      <canvas id="edit-picture"></canvas>
      <canvas id="edit-mask" role="img" aria-labelledby="edit-mask-label"></canvas>
    </div>
    <div class="edit-row">
      <label for="edit-brush">{text("brush")}</label>
      <input type="range" id="edit-brush" min="{low}" max="{high}" value="{brush}">
      <button type="button" id="edit-clear" class="edit-button">{text("clear")}</button>
    </div>
    <label for="edit-strength">{text("strength")}</label>
    <div class="edit-row">
      <input type="range" id="edit-strength" min="0.05" max="1" step="0.05" value="{DEFAULT_IMG2IMG_STRENGTH}">
      <output id="edit-strength-value" for="edit-strength">{DEFAULT_IMG2IMG_STRENGTH}</output>
    </div>
    {_control_part(text, controlnet=controlnet)}
    {_lora_part(text, loras)}
    <label for="edit-prompt">{text("prompt")}</label>
    <textarea id="edit-prompt" rows="2" maxlength="{limits.MAX_PROMPT_CHARS}"></textarea>
    <label for="edit-seed">{text("seed")}</label>
    <input type="number" id="edit-seed" min="0" max="{limits.MAX_SEED}" value="{limits.DEFAULT_SEED}">
    <button type="button" id="edit-run" class="edit-button edit-primary">{text("generate")}</button>
  </div>
  <div class="edit-column">
    <div id="edit-status" role="status" aria-live="polite" aria-atomic="true"></div>
    <img id="edit-result" alt="{escape(say["result"])}" hidden>
  </div>
</div>"""
    return gr.HTML(html, elem_id="edit-tab", padding=False)


def _control_part(text: Callable[[str], str], *, controlnet: bool) -> str:
    """The ControlNet fieldset: use the image as a control image, its kind and scale;
    disabled (with the flag that enables it said) without `--controlnet`."""
    kinds = "".join(f'<option value="{kind}">{kind}</option>' for kind in CONTROL_KINDS)
    note = text("control_note" if controlnet else "control_off")
    return f"""<fieldset id="edit-control-box" class="edit-fieldset"{"" if controlnet else " disabled"}>
      <legend>{text("control")}</legend>
      <div class="edit-row">
        <input type="checkbox" id="edit-control" aria-describedby="edit-control-note">
        <label for="edit-control">{text("control_use")}</label>
      </div>
      <p id="edit-control-note" class="edit-note">{note}</p>
      <label for="edit-control-kind">{text("control_kind")}</label>
      <select id="edit-control-kind">{kinds}</select>
      <label for="edit-control-scale">{text("control_scale")}</label>
      <div class="edit-row">
        <input type="range" id="edit-control-scale" min="0" max="{MAX_CONTROL_SCALE:g}" step="0.05" value="{DEFAULT_CONTROL_SCALE}">
        <output id="edit-control-scale-value" for="edit-control-scale">{DEFAULT_CONTROL_SCALE}</output>
      </div>
    </fieldset>"""


def _lora_part(text: Callable[[str], str], names: list[str]) -> str:
    """A LoRA (or none) and its scale."""
    options = "".join(f'<option value="{escape(name)}">{escape(name)}</option>' for name in names)
    top = limits.MAX_LORA_SCALE
    return f"""<label for="edit-lora">{text("lora")}</label>
    <select id="edit-lora"><option value="" data-say="lora_none">{escape(EDIT_TEXT["en"]["lora_none"])}</option>{options}</select>
    <label for="edit-lora-scale">{text("lora_scale")}</label>
    <div class="edit-row">
      <input type="range" id="edit-lora-scale" min="{-top:g}" max="{top:g}" step="0.05" value="{limits.DEFAULT_LORA_SCALE:g}">
      <output id="edit-lora-scale-value" for="edit-lora-scale">{limits.DEFAULT_LORA_SCALE:g}</output>
    </div>"""
