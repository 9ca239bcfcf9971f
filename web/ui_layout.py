"""The Create tab's components and where they sit: the form on the left (Generate
and Cancel above the fold), the images, their parameters and the history on the
right. What they do is wired in web/ui.py; every limit and default comes from
pipeline/limits.py, and every label from web/ui_text.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipeline import limits
from web.ui_form import PRESET_SIZES, normalization_choices, preset_choices
from web.ui_lora import LoraPicker, lora_picker
from web.ui_text import EXAMPLES, I18N

# Browser storage of the history. The key is fixed so that the history survives a
# restart of the server; the "secret" is no secret (Gradio hands it to the page,
# which does the encrypting): what comes back is checked again (web/ui_history.py).
HISTORY_STORAGE_KEY = "zimage-history"
HISTORY_STORAGE_SECRET = "zimage-history-v1"


@dataclass
class CreateTab:
    """The components of the Create tab that events read or write."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    seed: gr.Number
    width: gr.Number
    height: gr.Number
    steps: gr.Slider
    guidance_scale: gr.Slider
    batch_size: gr.Slider
    no_cache: gr.Checkbox
    normalization: gr.Dropdown
    preset: gr.Dropdown
    notes: dict[str, gr.Markdown]  # beside each field of web.ui_form.NOTED
    run: gr.Button
    cancel: gr.Button
    dice: gr.Button
    reuse: gr.Button
    use_settings: gr.Button
    download_all: gr.Button
    queue_note: gr.Markdown
    notice: gr.Markdown
    gallery: gr.Gallery
    status: gr.Markdown
    parameters: gr.Textbox
    past: gr.Gallery  # the history's gallery
    api_trigger: gr.Button
    api_seed: gr.Number  # the generate API's seed: the API's default (42), not the page's (-1)
    too_long: gr.Button  # (never shown) says in the page that the prompt is too long
    png_read: gr.Button  # (never shown) pressed by the page with a PNG's parameters text
    tz: gr.Textbox  # the browser's time zone (hidden)
    history_search: gr.Textbox
    history_delete: gr.Button
    history_clear: gr.Button
    history: gr.State
    stored_history: gr.BrowserState
    shown: gr.State  # the entries of the main viewer, for "Use these settings"
    selected: gr.State
    last_seed: gr.State
    listed: gr.State  # the history entries the panel lists (the search's matches)
    picked: gr.State  # (key, seed) of the history entry last clicked, or None
    similar_box: gr.Column  # "Already made for similar prompts" (web/ui_similar.py), shown on a miss
    similar_gallery: gr.Gallery
    similar_found: gr.State  # what the panel shows: key, prompt, score of each
    loras: LoraPicker  # the LoRAs the generation applies (web/ui_lora.py)

    @property
    def form(self) -> dict[str, Any]:
        """The generate event's inputs, named and in order as the `generate` API takes them."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "batch_size": self.batch_size,
            "no_cache": self.no_cache,
            "prompt_normalization": self.normalization,
            "history": self.history,
        }

    @property
    def api_form(self) -> list[Any]:
        """The generate API's inputs: `form`'s, with the seed of the API's default."""
        return [self.api_seed if c is self.seed else c for c in self.form.values()]

    @property
    def settings(self) -> list[Any]:
        """The fields an image's parameters set (web.ui_form.form_values gives their values)."""
        return [
            self.prompt,
            self.negative_prompt,
            self.seed,
            self.preset,
            self.width,
            self.height,
            self.steps,
            self.guidance_scale,
            self.normalization,
            *self.loras.components,
        ]


def page_states() -> dict[str, Any]:
    """The page's states, for `create_tab`. Built outside the tabs: Gradio renders a
    tab's children only while it is shown, and the history must be kept whichever is."""
    return {
        "history": gr.State([]),
        "stored_history": gr.BrowserState([], storage_key=HISTORY_STORAGE_KEY, secret=HISTORY_STORAGE_SECRET),
        "shown": gr.State([]),
        "selected": gr.State(0),
        "last_seed": gr.State(None),
        "listed": gr.State([]),
        "picked": gr.State(None),
        "similar_found": gr.State([]),
    }


def create_tab(normalization: str, states: dict[str, Any]) -> CreateTab:
    """Build the Create tab's components (inside a `gr.Tab`) over `states` (`page_states`),
    the prompt normalisation chosen as `normalization`."""
    t, notes = I18N, {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            prompt = gr.Textbox(
                label=t("prompt"),
                info=t("prompt_info"),
                lines=3,
                max_lines=8,
                placeholder=t("prompt_placeholder"),
                elem_id="prompt",
            )
            # The prompt's note and its character counter (filled by the page's script as
            # you type, static/ui.js) share one line, so that a note moves nothing.
            with gr.Row(elem_id="prompt-foot", equal_height=False):
                notes["prompt"] = _note("prompt")
                gr.HTML(f"0 / {limits.MAX_PROMPT_CHARS}", elem_id="prompt-count", padding=False)
            with gr.Row(elem_id="actions"):
                run = gr.Button(t("generate"), variant="primary", elem_id="generate", scale=4)
                cancel = gr.Button(t("cancel"), variant="stop", elem_id="cancel", scale=1)
            # Pressed by the page's script instead of Generate when the prompt is too
            # long: the note says so in the page, and nothing is sent (static/ui.js).
            too_long = gr.Button(elem_id="too-long", elem_classes=["page-only"])
            # Always on the page, empty when silent (no room taken): live regions.
            queue_note = gr.Markdown("", elem_id="queue-note")
            notice = gr.Markdown("", elem_id="notice")
            with gr.Row(elem_id="size-row"):
                preset = gr.Dropdown(
                    preset_choices("en"),
                    value=PRESET_SIZES[0],
                    label=t("resolution"),
                    elem_id="preset",
                    scale=2,
                    min_width=150,
                )
                # No minimum/maximum: Gradio would refuse out-of-range values itself,
                # in English and naming no field; ours snap, and say so.
                sizes = [
                    gr.Number(
                        limits.DEFAULT_SIZE,
                        label=t(side),
                        precision=0,
                        step=limits.SIZE_MULTIPLE,
                        elem_id=side,
                        min_width=90,
                    )
                    for side in ("width", "height")
                ]
            # The sizes' notes on a line of their own across the row, not wrapped in
            # the narrow columns.
            with gr.Row(elem_id="size-notes"):
                notes["width"], notes["height"] = _note("width"), _note("height")
            with gr.Row():
                with gr.Column(scale=3, min_width=150):
                    # -1: a new seed on every press (A1111's way); a number typed, or the
                    # drawn one put back with "Reuse", is kept until Random sets -1 again.
                    seed = gr.Number(limits.RANDOM_SEED, label=t("seed"), precision=0, elem_id="seed")
                    notes["seed"] = _note("seed")
                with gr.Column(scale=2, min_width=100):
                    dice = gr.Button(t("random_seed"), size="sm", elem_id="random-seed")
                    reuse = gr.Button(t("reuse_seed"), size="sm", elem_id="reuse-seed")
                with gr.Column(scale=3, min_width=150):
                    batch_size = _range(
                        notes, "batch_size", 1, limits.MAX_UI_BATCH, 1, step=1, elem_id="batch"
                    )
                    no_cache = gr.Checkbox(False, label=t("bypass_cache"), elem_id="bypass")
            with gr.Accordion(t("advanced"), open=False, elem_id="advanced"):
                steps = _range(
                    notes, "steps", limits.MIN_STEPS, limits.MAX_STEPS, limits.DEFAULT_STEPS, step=1
                )
                guidance_scale = _range(
                    notes,
                    "guidance_scale",
                    0.0,
                    limits.MAX_GUIDANCE,
                    limits.DEFAULT_GUIDANCE,
                    step=0.5,
                    label="guidance",
                    elem_id="guidance",
                )
                negative_prompt = gr.Textbox(
                    "", label=t("negative_prompt"), info=t("negative_note"), elem_id="negative"
                )
                notes["negative_prompt"] = _note("negative_prompt")
                normalization_box = gr.Dropdown(
                    normalization_choices("en"),
                    value=normalization,
                    label=t("normalization"),
                    info=t("normalization_note"),
                    elem_id="normalization",
                )
            loras = lora_picker()
            # PNG Info: a PNG's parameters read into the form. The page reads the file
            # itself (static/ui.js) and sends only its parameters text: no upload.
            with gr.Accordion(t("png_info"), open=False, elem_id="png-info"):
                gr.HTML(
                    '<input type="file" accept="image/png,.png" id="png-info-file">',
                    elem_id="png-info-drop",
                    padding=False,
                )
                gr.Markdown(t("png_info_note"), elem_id="png-info-note")
            png_read = gr.Button(elem_id="png-read", elem_classes=["page-only"])
            # The page's own event: not callable by gradio_client (Gradio's default,
            # "undocumented", leaves it callable under /load_example).
            gr.Examples(EXAMPLES, inputs=prompt, label=t("examples"), api_visibility="private")
        with gr.Column(scale=6, min_width=320):
            # Download all, in the toolbar of the image shown too (Gradio's own
            # "download_all" shows only in the grid, which the viewer hides): one zip of
            # the results under their download names (static/ui.js, web/ui_zip.py).
            # (Its words are put in by static/ui.js: a toolbar button's label is no I18N's.)
            download_all = gr.Button("Download all", elem_id="download-all")
            gallery = gr.Gallery(
                label=t("results"),
                columns=2,
                object_fit="contain",
                height="min(52vh, 680px)",
                interactive=False,
                buttons=["download", download_all, "fullscreen"],
                elem_id="result",
            )
            status = gr.Markdown(elem_id="status")
            # Near-repeats of a miss, shown while its image is made; a click uses one.
            with gr.Column(visible=False, elem_id="similar") as similar_box:
                gr.Markdown(t("similar_heading"), elem_id="similar-heading")
                similar_gallery = gr.Gallery(
                    label=t("similar_heading"),
                    show_label=False,
                    columns=4,
                    height="auto",
                    allow_preview=False,
                    elem_id="similar-gallery",
                )
                gr.Markdown(t("similar_info"), elem_id="similar-info")
            # Enabled once there is an image whose settings it can use.
            use_settings = gr.Button(t("use_settings"), size="sm", interactive=False, elem_id="use-settings")
            # The history, in the column of the images: found without scrolling far.
            with gr.Group():
                gr.Markdown(t("history"), elem_id="history-heading")
                with gr.Row(elem_id="history-tools", equal_height=True):
                    history_search = gr.Textbox(
                        label=t("history_search"),
                        placeholder=t("history_search_placeholder"),
                        elem_id="history-search",
                        scale=3,
                        min_width=140,
                    )
                    history_delete = gr.Button(
                        t("history_delete"),
                        size="sm",
                        interactive=False,
                        elem_id="history-delete",
                        min_width=80,
                    )
                    history_clear = gr.Button(
                        t("history_clear"), size="sm", elem_id="history-clear", min_width=80
                    )
                past = gr.Gallery(
                    show_label=False,
                    label=t("history"),
                    columns=4,
                    height="auto",
                    allow_preview=False,
                    elem_id="history",
                )
            parameters = gr.Textbox(
                label=t("parameters"),
                lines=2,
                max_lines=4,
                interactive=False,
                buttons=["copy"],
                elem_id="parameters",
            )
    # The generate API's trigger: never shown, so its errors reach API callers as
    # errors while the page's own Generate keeps the page as it was.
    api_trigger = gr.Button(visible=False)
    api_seed = gr.Number(limits.DEFAULT_SEED, precision=0, visible=False)
    tz = gr.Textbox(visible=False)  # the browser's time zone, for the history's times (set on load)
    return CreateTab(
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        width=sizes[0],
        height=sizes[1],
        steps=steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        no_cache=no_cache,
        normalization=normalization_box,
        preset=preset,
        notes=notes,
        run=run,
        cancel=cancel,
        dice=dice,
        reuse=reuse,
        use_settings=use_settings,
        download_all=download_all,
        queue_note=queue_note,
        notice=notice,
        gallery=gallery,
        status=status,
        parameters=parameters,
        past=past,
        api_trigger=api_trigger,
        api_seed=api_seed,
        too_long=too_long,
        png_read=png_read,
        tz=tz,
        history_search=history_search,
        history_delete=history_delete,
        history_clear=history_clear,
        similar_box=similar_box,
        similar_gallery=similar_gallery,
        loras=loras,
        **states,
    )


def _note(name: str) -> gr.Markdown:
    """The note beside a field: always on the page (a live region that screen readers
    announce, and the field's aria-describedby, static/ui.js), empty and taking no room
    while it has nothing to say (static/style.css)."""
    return gr.Markdown("", elem_id=f"{name.replace('_', '-')}-note", elem_classes=["field-note"])


def _range(
    notes: dict[str, gr.Markdown],
    name: str,
    low: float,
    high: float,
    value: float,
    *,
    step: float,
    label: str | None = None,
    elem_id: str | None = None,
) -> gr.Slider:
    """A slider whose number box the page's script checks against its range (and says
    what it did in its range note), and the field's note beside it."""
    slider = gr.Slider(
        low,
        high,
        value=value,
        step=step,
        label=I18N(label or name),
        elem_id=elem_id or name,
        elem_classes=["range-checked"],
    )
    if float(step).is_integer() and float(low).is_integer():
        # A whole-number slider: gradio_client's view_api says `int` (Gradio says
        # `float` for every slider without precision=0, which would round 8.5
        # silently; web/ui_api.py refuses it instead).
        slider.api_info = lambda: {**gr.Slider.api_info(slider), "type": "integer"}  # type: ignore[method-assign]
    notes[name] = _note(name)
    return slider
