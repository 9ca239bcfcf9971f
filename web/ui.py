"""The Gradio UI: one page over GenerationService, and what its components do.

The page's Generate (button, Ctrl+Enter, Shift+Enter) runs `web.ui_run.UiRun`,
which never raises: a problem is said beside its field or in a notice, and the
images, status and history on the page stay. The same generation is also the
API for `gradio_client` (`api_name="generate"`, web/ui_api.py), whose errors
are Gradio errors, as an API's should be. The components are laid out in
web/ui_layout.py (the Create tab) and web/ui_stats.py (the Stats tab).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from pipeline.engine import Engine, EngineState
from pipeline.limits import MAX_PROMPT_CHARS, RANDOM_SEED
from pipeline.service import GenerationService
from pipeline.tiny_model import DEMO_LORA_NAME
from web.ui_api import generate_api, plain_api_labels
from web.ui_edit import edit_head, edit_panel
from web.ui_form import (
    NOTED,
    form_values,
    normalization_choices,
    preset_choices,
    preset_size,
    size_preset,
    snapper,
)
from web.ui_history import gallery as gallery_items
from web.ui_history import persistable, revalidate
from web.ui_history_panel import identity, listing, matching, without
from web.ui_images import UiImages, namespace_of
from web.ui_layout import CreateTab, create_tab, page_states
from web.ui_lora import lora_choices
from web.ui_png_info import png_reader
from web.ui_run import QUEUE_WATCH_S, UiRun
from web.ui_similar import SimilarPanel
from web.ui_stats import StatsTab
from web.ui_text import I18N, SCRIPT_TEXT, language_of, say
from web.ui_zip import ZIP_ROUTE

# Gradio's own temp files (none of ours: see web/ui_images.py) are kept this long.
UI_FILE_TTL_S = 3600
MODEL_STATE_POLL_S = 2.0
SCRIPT = Path(__file__).resolve().parent.parent / "static" / "ui.js"
LANG_SCRIPT = SCRIPT.with_name("lang.js")  # the page's language: first, the others read it


def page_head() -> str:
    """The page's own scripts (static/lang.js, then static/ui.js with its texts), for
    `mount_gradio_app(head=...)`."""
    script = SCRIPT.read_text(encoding="utf-8")
    script = script.replace("__TEXT__", json.dumps(SCRIPT_TEXT, ensure_ascii=False))
    script = script.replace("__LIMIT__", str(MAX_PROMPT_CHARS))
    script = script.replace("__ZIP_ROUTE__", json.dumps(ZIP_ROUTE))
    language = LANG_SCRIPT.read_text(encoding="utf-8")
    return f"<script>\n{language}</script>\n<script>\n{script}</script>\n{edit_head()}"


def create_ui(service: GenerationService, engine: Engine, images: UiImages, *, demo_model: bool) -> gr.Blocks:
    with gr.Blocks(title="Z-Image-Turbo", delete_cache=(UI_FILE_TTL_S, UI_FILE_TTL_S)) as ui:
        gr.Markdown("# Z-Image-Turbo", elem_id="title")
        gr.Markdown(I18N("demo_banner"), visible=demo_model, elem_id="demo-banner")
        loading = gr.Markdown(elem_id="model-state", visible=False)
        states = page_states()
        with gr.Tab(I18N("tab_generate"), id="generate"):
            tab = create_tab(service.normalization, states)
        with gr.Tab(I18N("tab_edit"), id="edit"):
            edit_panel(controlnet=engine.controlnet is not None, loras=_lora_names(engine, demo_model))
        with gr.Tab(I18N("tab_stats"), id="stats"):
            stats = StatsTab(service)
        # Gradio copies a file it is handed into the component's cache dir, and keeps
        # the path (to delete it later) when it is already there. Our paths are not
        # files (web/ui_images.py): with a cache dir of their own that holds none of
        # them, Gradio passes them through untouched and tracks nothing for ever.
        for shown_gallery in (tab.gallery, tab.past):
            shown_gallery.GRADIO_CACHE = str(images.root.parent / "untracked")

        runs = UiRun(service, engine, images, tab)
        _bind_generate(
            tab, runs, SimilarPanel(service, images, runs, tab), generate_api(service, engine, images)
        )
        _bind_form(tab, engine, images, service)
        _bind_history(tab, images)
        _bind_load(ui, tab, service, engine, images, loading)
        stats.refresh_on(ui)
    plain_api_labels(ui)
    return ui


def _lora_names(engine: Engine, demo_model: bool) -> list[str]:
    """The LoRAs of `--lora-dir` now, and the demo model's demo LoRA (built when first used)."""
    names = set(engine.loras.files(demo=False))
    return sorted(names | {DEMO_LORA_NAME} if demo_model else names)


def _bind_generate(tab: CreateTab, runs: UiRun, similar: SimilarPanel, api: Any) -> None:
    """Generate (the near-repeats panel first, then the generation), Cancel, the
    queue line, a near-repeat used, and the hidden trigger of the generate API."""
    # The page's timer for the queue line starts, the generation runs, the timer stops.
    # concurrency_limit=None: Gradio would otherwise run one event at a time, and a
    # cache hit would wait behind a running generation; the engine serialises the model.
    watch = gr.Timer(QUEUE_WATCH_S, active=False)
    watch.tick(runs.watch, None, [tab.queue_note, watch], api_name=False, queue=False, show_progress="hidden")
    for trigger in (tab.run.click, tab.prompt.submit):
        trigger(
            runs.watch_start,
            None,
            watch,
            js="() => { window.zimage && window.zimage.started(); }",
            api_name=False,
            queue=False,
            show_progress="hidden",
        ).then(
            similar.look,
            set(tab.form.values()) | set(tab.loras.components),
            similar.outputs,
            api_name=False,
            queue=False,
            show_progress="hidden",
        ).then(
            runs.page,
            set(tab.form.values()) | {tab.tz} | set(tab.loras.components),
            runs.outputs,
            api_name=False,
            concurrency_limit=None,
            show_progress_on=[tab.gallery],
        ).then(
            runs.watch_stop,
            None,
            [tab.queue_note, watch],
            js="() => { window.zimage && window.zimage.finished(); }",
            api_name=False,
            queue=False,
            show_progress="hidden",
        )
    tab.api_trigger.click(
        api,
        tab.api_form,
        [tab.gallery, tab.status, tab.history, tab.past],
        api_name="generate",
        concurrency_limit=None,
    )
    tab.cancel.click(runs.cancel, None, [tab.notice], api_name=False, queue=False, show_progress="hidden")
    tab.similar_gallery.select(
        similar.use,
        [tab.similar_found, tab.normalization, tab.history, tab.tz],
        similar.use_outputs,
        api_name=False,
        queue=False,
        show_progress="hidden",
    )


def _bind_form(tab: CreateTab, engine: Engine, images: UiImages, service: GenerationService) -> None:
    """Presets and sizes, the seed buttons, and an image's settings back into the form."""
    notes = tab.notes
    tab.preset.change(
        preset_size, tab.preset, [tab.width, tab.height, notes["width"], notes["height"]], **_QUIET
    )
    for box, name in ((tab.width, "width"), (tab.height, "height")):  # a typed size picks its preset
        box.input(size_preset, [tab.width, tab.height], tab.preset, **_QUIET)
        box.blur(
            snapper(engine, name),
            [tab.width, tab.height],
            [box, notes[name], tab.preset],
            show_progress="hidden",
            **_QUIET,
        )
    # A prompt or negative prompt over the limit is said beside it in the page, and
    # never sent: a pasted 64 KB would be refused whole (413) by the server's body limit.
    tab.too_long.click(
        None,
        None,
        [notes["prompt"], notes["negative_prompt"]],
        js="() => window.zimage.tooLong()",
        **_QUIET,
    )
    for name in NOTED:  # a field's note goes as soon as the field is changed, in the page
        tab.form[name].input(None, None, notes[name], js="() => ''", **_QUIET)
    tab.dice.click(lambda: RANDOM_SEED, None, tab.seed, **_QUIET)  # a new seed each press again
    tab.reuse.click(lambda last: gr.skip() if last is None else last, tab.last_seed, tab.seed, **_QUIET)
    tab.prompt.change(None, tab.prompt, None, js="(p) => { window.zimage && window.zimage.count(p); }")

    def use(entries: list[dict[str, Any]], index: int) -> tuple[Any, ...]:
        if not entries:
            return tuple(gr.skip() for _ in tab.settings)
        return form_values(entries[min(index, len(entries) - 1)]["params"])

    tab.use_settings.click(use, [tab.shown, tab.selected], tab.settings, **_QUIET)
    # PNG Info: the page reads the file and hands over its parameters text (static/ui.js).
    tab.png_read.click(
        png_reader(tab, service),
        tab.parameters,
        [*tab.settings, tab.notice, tab.parameters],
        js="() => [window.zimage.pngText || '']",
        **_QUIET,
    )

    def pick(entries: list[dict[str, Any]], evt: gr.SelectData) -> tuple[Any, Any]:
        if not entries or evt.index >= len(entries):
            return gr.skip(), gr.skip()
        return evt.index, entries[evt.index]["parameters"]

    tab.gallery.select(pick, tab.shown, [tab.selected, tab.parameters], **_QUIET)


def _bind_history(tab: CreateTab, images: UiImages) -> None:
    """The history panel: a click shows the image and restores its settings; search;
    delete the clicked one; clear all (once the browser's confirm says so)."""

    def view(entries: list[dict[str, Any]], request: gr.Request, evt: gr.SelectData) -> tuple[Any, ...]:
        # The clicked history image in the main viewer, and its settings in the form.
        if evt.index >= len(entries):
            return tuple(gr.skip() for _ in range(7 + len(tab.settings)))
        entry = entries[evt.index]
        viewer = gr.Gallery(value=gallery_items(images, language_of(request), [entry]), selected_index=0)
        picked = list(identity(entry))
        return (
            viewer,
            [entry],
            0,
            entry["parameters"],
            picked,
            gr.Button(interactive=True),  # Delete
            gr.Button(interactive=True),  # Use these settings
            *form_values(entry["params"]),
        )

    tab.past.select(
        view,
        tab.listed,
        [
            tab.gallery,
            tab.shown,
            tab.selected,
            tab.parameters,
            tab.picked,
            tab.history_delete,
            tab.use_settings,
            *tab.settings,
        ],
        show_progress="hidden",
        **_QUIET,
    )
    shown = [tab.past, tab.listed, tab.picked, tab.history_delete]

    def relist(history: list[dict[str, Any]], query: str, tz: str, request: gr.Request) -> tuple[Any, ...]:
        listed = matching(history, query)
        return listing(images, language_of(request), tz, listed), listed, None, gr.Button(interactive=False)

    tab.history_search.change(
        relist, [tab.history, tab.history_search, tab.tz], shown, show_progress="hidden", **_QUIET
    )

    def delete(
        history: list[dict[str, Any]], picked: Any, query: str, tz: str, request: gr.Request
    ) -> tuple[Any, ...]:
        kept = without(history, picked)
        return (kept, persistable(kept), *relist(kept, query, tz, request))

    stores = [tab.history, tab.stored_history]
    tab.history_delete.click(
        delete,
        [tab.history, tab.picked, tab.history_search, tab.tz],
        stores + shown,
        show_progress="hidden",
        **_QUIET,
    )
    confirmed = gr.Checkbox(visible=False)  # what the browser's confirm() answered

    def clear(yes: bool, request: gr.Request) -> tuple[Any, ...]:
        if not yes:
            return tuple(gr.skip() for _ in range(6))
        return ([], [], *relist([], "", "", request))

    tab.history_clear.click(
        clear,
        confirmed,
        stores + shown,
        js="() => window.zimage.ask('clear_history')",
        show_progress="hidden",
        **_QUIET,
    )


def _bind_load(
    ui: gr.Blocks,
    tab: CreateTab,
    service: GenerationService,
    engine: Engine,
    images: UiImages,
    loading: gr.Markdown,
) -> None:
    """On load: the model's state (polled until ready or failed), the history kept in
    the browser (checked again), and the words of the page's language."""

    def model_state(request: gr.Request) -> tuple[Any, Any]:
        if engine.state == EngineState.READY:
            return gr.Markdown(visible=False), gr.Timer(active=False)
        if engine.error:
            text = say(language_of(request), "model_failed", reason=engine.error)
            return gr.Markdown(text, visible=True), gr.Timer(active=False)
        return gr.Markdown(I18N(f"state_{engine.state}"), visible=True), gr.Timer(active=True)

    state_timer = gr.Timer(MODEL_STATE_POLL_S)
    state_timer.tick(model_state, None, [loading, state_timer], **_QUIET)
    ui.load(model_state, None, [loading, state_timer], **_QUIET)

    async def restore(stored: Any, tz: str, request: gr.Request) -> tuple[Any, ...]:
        lang = language_of(request)
        kept = await revalidate(service, namespace_of(request), stored)
        return (
            kept,
            kept,
            listing(images, lang, tz, kept),
            kept,
            tz,
            gr.Dropdown(choices=preset_choices(lang)),
            gr.Dropdown(choices=normalization_choices(lang)),
        )

    ui.load(lora_choices(service, tab.loras), None, [tab.loras.box, *tab.loras.names], **_QUIET)
    tab.download_all.click(None, None, None, js="() => window.zimage.downloadAll()", **_QUIET)

    ui.load(
        restore,
        [tab.stored_history, tab.tz],
        [tab.history, tab.stored_history, tab.past, tab.listed, tab.tz, tab.preset, tab.normalization],
        js="(stored) => [stored, Intl.DateTimeFormat().resolvedOptions().timeZone || '']",
        **_QUIET,
    )


# The page's own small events: no API endpoint, and not queued behind generations.
_QUIET: dict[str, Any] = {"api_name": False, "queue": False}
