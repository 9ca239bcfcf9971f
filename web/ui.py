"""The Gradio UI: one page over GenerationService.

The page's Generate (button, Ctrl+Enter, Shift+Enter) runs `web.ui_run.UiRun`,
which never raises: a problem is said beside its field or in a notice, and the
images, status and history on the page stay. The same generation is also the
API for `gradio_client` (`api_name="generate"`, see `UiRun.api`), whose errors
are Gradio errors, as an API's should be.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import gradio as gr

from pipeline.engine import Engine, EngineState
from pipeline.limits import MAX_PROMPT_CHARS, MAX_SEED
from pipeline.service import GenerationService
from web.ui_form import CUSTOM, PRESET_SIZES, PRESETS, size_limits, size_preset, snap
from web.ui_history import gallery as gallery_items
from web.ui_history import revalidate
from web.ui_images import UiImages
from web.ui_run import MAX_UI_BATCH, QUEUE_WATCH_S, UiRun, language_of, namespace_of
from web.ui_stats import TierTimeline, latency_text, plot_labels, tiers_frame
from web.ui_text import EXAMPLES, I18N, SCRIPT_TEXT, say

NORMALIZATIONS = ("basic", "none", "aggressive")
# Gradio's own temp files (none of ours: see web/ui_images.py) are kept this long.
UI_FILE_TTL_S = 3600
STATS_REFRESH_S = 3.0
# Browser storage of the history. The key is fixed so that the history survives a
# restart of the server; the "secret" is no secret (Gradio hands it to the page,
# which does the encrypting): what comes back is checked again (web/ui_history.py).
HISTORY_STORAGE_KEY = "zimage-history"
HISTORY_STORAGE_SECRET = "zimage-history-v1"
SCRIPT = Path(__file__).resolve().parent.parent / "static" / "ui.js"


def page_head() -> str:
    """The page's own script (static/ui.js), with its texts, for `mount_gradio_app(head=...)`."""
    script = SCRIPT.read_text(encoding="utf-8")
    script = script.replace("__TEXT__", json.dumps(SCRIPT_TEXT, ensure_ascii=False))
    script = script.replace("__LIMIT__", str(MAX_PROMPT_CHARS))
    return f"<script>\n{script}</script>"


def create_ui(service: GenerationService, engine: Engine, images: UiImages, *, demo_model: bool) -> gr.Blocks:
    t = I18N
    timeline = TierTimeline()
    service.observers.append(timeline.record)
    runs = UiRun(service, engine, images)
    with gr.Blocks(title="Z-Image-Turbo", delete_cache=(UI_FILE_TTL_S, UI_FILE_TTL_S)) as ui:
        gr.Markdown("# Z-Image-Turbo", elem_id="title")
        gr.Markdown(t("demo_banner"), visible=demo_model, elem_id="demo-banner")
        loading = gr.Markdown(elem_id="model-state", visible=False)
        history = gr.State([])
        stored_history = gr.BrowserState([], storage_key=HISTORY_STORAGE_KEY, secret=HISTORY_STORAGE_SECRET)
        shown = gr.State([])  # the entries of the main viewer, for "Use these settings"
        selected = gr.State(0)
        last_seed = gr.State(None)

        with gr.Tab(t("tab_generate"), id="generate"):
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
                    # Filled by the page's script as you type (static/ui.js).
                    gr.HTML(f"0 / {MAX_PROMPT_CHARS}", elem_id="prompt-count", padding=False)
                    notes = {"prompt": _note("prompt")}
                    with gr.Row(elem_id="actions"):
                        run = gr.Button(t("generate"), variant="primary", elem_id="generate", scale=4)
                        cancel = gr.Button(t("cancel"), variant="stop", elem_id="cancel", scale=1)
                    queue_note = gr.Markdown(visible=False, elem_id="queue-note")
                    notice = gr.Markdown(visible=False, elem_id="notice")
                    with gr.Row():
                        preset = gr.Dropdown(
                            _preset_choices("en"),
                            value=PRESET_SIZES[0],
                            label=t("resolution"),
                            elem_id="preset",
                            scale=2,
                            min_width=150,
                        )
                        # No minimum/maximum: Gradio would refuse out-of-range values
                        # itself, in English and naming no field; ours snap, and say so.
                        with gr.Column(min_width=90):
                            width = gr.Number(1024, label=t("width"), precision=0, step=16, elem_id="width")
                            notes["width"] = _note("width")
                        with gr.Column(min_width=90):
                            height = gr.Number(
                                1024, label=t("height"), precision=0, step=16, elem_id="height"
                            )
                            notes["height"] = _note("height")
                    with gr.Row():
                        with gr.Column(scale=3, min_width=150):
                            seed = gr.Number(42, label=t("seed"), precision=0, elem_id="seed")
                            notes["seed"] = _note("seed")
                        with gr.Column(scale=2, min_width=100):
                            dice = gr.Button(t("random_seed"), size="sm", elem_id="random-seed")
                            reuse = gr.Button(t("reuse_seed"), size="sm", elem_id="reuse-seed")
                        with gr.Column(scale=3, min_width=150):
                            batch_size = gr.Slider(
                                1,
                                MAX_UI_BATCH,
                                value=1,
                                step=1,
                                label=t("batch_size"),
                                elem_id="batch",
                                elem_classes=["range-checked"],
                            )
                            notes["batch_size"] = _note("batch_size")
                            no_cache = gr.Checkbox(False, label=t("bypass_cache"), elem_id="bypass")
                    with gr.Accordion(t("advanced"), open=False, elem_id="advanced"):
                        steps = gr.Slider(
                            1,
                            50,
                            value=8,
                            step=1,
                            label=t("steps"),
                            elem_id="steps",
                            elem_classes=["range-checked"],
                        )
                        notes["steps"] = _note("steps")
                        guidance_scale = gr.Slider(
                            0.0,
                            20.0,
                            value=0.0,
                            step=0.5,
                            label=t("guidance"),
                            elem_id="guidance",
                            elem_classes=["range-checked"],
                        )
                        notes["guidance_scale"] = _note("guidance_scale")
                        negative_prompt = gr.Textbox(
                            "", label=t("negative_prompt"), info=t("negative_note"), elem_id="negative"
                        )
                        notes["negative_prompt"] = _note("negative_prompt")
                        normalization = gr.Dropdown(
                            _normalization_choices("en"),
                            value=service.normalization,
                            label=t("normalization"),
                            info=t("normalization_note"),
                            elem_id="normalization",
                        )
                    gr.Examples(EXAMPLES, inputs=prompt, label=t("examples"))
                with gr.Column(scale=6, min_width=320):
                    gallery = gr.Gallery(
                        label=t("results"),
                        columns=2,
                        object_fit="contain",
                        height="min(62vh, 680px)",
                        interactive=False,
                        buttons=["download", "fullscreen"],
                        elem_id="result",
                    )
                    status = gr.Markdown(elem_id="status")
                    use_settings = gr.Button(t("use_settings"), size="sm", elem_id="use-settings")
                    parameters = gr.Textbox(
                        label=t("parameters"),
                        lines=2,
                        max_lines=4,
                        interactive=False,
                        buttons=["copy"],
                        elem_id="parameters",
                    )
            past = gr.Gallery(
                label=t("history"), columns=6, height="auto", allow_preview=False, elem_id="history"
            )
            # The generate API's trigger: never shown, so its errors reach API callers
            # as errors while the page's own Generate keeps the page as it was.
            api_trigger = gr.Button(visible=False)
            # Gradio copies a file it is handed into the component's cache dir, and
            # keeps the path (to delete it later) when it is already there. Our paths
            # are not files (web/ui_images.py): with a cache dir of their own that
            # holds none of them, Gradio passes them through untouched and tracks
            # nothing for ever.
            for shown_gallery in (gallery, past):
                shown_gallery.GRADIO_CACHE = str(images.root.parent / "untracked")

        with gr.Tab(t("tab_stats"), id="stats"):
            requests_plot = gr.LinePlot(
                x="time",
                y="requests",
                color="tier",
                label=t("requests_plot"),
                x_axis_format="%H:%M:%S",
                elem_id="requests-plot",
                **plot_labels("en"),
            )
            tiers_table = gr.Dataframe(label=t("tiers_table"), interactive=False, elem_id="tiers")
            latency = gr.Markdown(elem_id="latency")

        # -- generate ----------------------------------------------------------------
        form = [
            prompt,
            negative_prompt,
            seed,
            width,
            height,
            steps,
            guidance_scale,
            batch_size,
            no_cache,
            normalization,
            history,
        ]
        runs.bind(
            gallery=gallery,
            status=status,
            notice=notice,
            history=history,
            stored_history=stored_history,
            past=past,
            shown=shown,
            selected=selected,
            parameters=parameters,
            last_seed=last_seed,
            width=width,
            height=height,
            preset=preset,
            notes=notes,
        )
        # Generate: the page's timer for the queue line starts, the generation runs, the
        # timer stops. concurrency_limit=None: Gradio would otherwise run one event at a
        # time, and a cache hit would wait behind a running generation; the engine
        # serialises the model itself.
        watch = gr.Timer(QUEUE_WATCH_S, active=False)
        watch.tick(runs.watch, None, [queue_note, watch], api_name=False, queue=False, show_progress="hidden")
        for trigger in (run.click, prompt.submit):
            trigger(
                runs.watch_start,
                None,
                watch,
                js="() => { window.zimage && window.zimage.started(); }",
                api_name=False,
                queue=False,
                show_progress="hidden",
            ).then(
                runs.page,
                form,
                runs.outputs,
                api_name=False,
                concurrency_limit=None,
                show_progress_on=[gallery],
            ).then(
                runs.watch_stop,
                None,
                [queue_note, watch],
                js="() => { window.zimage && window.zimage.finished(); }",
                api_name=False,
                queue=False,
                show_progress="hidden",
            )
        api_trigger.click(
            runs.api, form, [gallery, status, history, past], api_name="generate", concurrency_limit=None
        )
        cancel.click(runs.cancel, None, [notice], api_name=False, queue=False, show_progress="hidden")

        # -- the form ------------------------------------------------------------------
        preset.change(
            _preset_size,
            preset,
            [width, height, notes["width"], notes["height"]],
            api_name=False,
            queue=False,
        )
        for box, name in ((width, "width"), (height, "height")):  # typing a size picks its preset, or Custom
            box.input(size_preset, [width, height], preset, api_name=False, queue=False)
            box.blur(
                _snapper(engine, name),
                [width, height],
                [box, notes[name], preset],
                api_name=False,
                queue=False,
                show_progress="hidden",
            )
        dice.click(lambda: secrets.randbelow(MAX_SEED + 1), None, seed, api_name=False, queue=False)
        reuse.click(
            lambda last: gr.skip() if last is None else last, last_seed, seed, api_name=False, queue=False
        )
        prompt.change(None, prompt, None, js="(p) => { window.zimage && window.zimage.count(p); }")

        form_fields = [
            prompt,
            negative_prompt,
            seed,
            preset,
            width,
            height,
            steps,
            guidance_scale,
            normalization,
        ]

        def use(entries: list[dict[str, Any]], index: int) -> tuple[Any, ...]:
            if not entries:
                return tuple(gr.skip() for _ in form_fields)
            return _form_values(entries[min(index, len(entries) - 1)]["params"])

        use_settings.click(use, [shown, selected], form_fields, api_name=False, queue=False)

        def pick(entries: list[dict[str, Any]], evt: gr.SelectData) -> tuple[Any, Any]:
            if not entries or evt.index >= len(entries):
                return gr.skip(), gr.skip()
            return evt.index, entries[evt.index]["parameters"]

        gallery.select(pick, shown, [selected, parameters], api_name=False, queue=False)

        def view(entries: list[dict[str, Any]], request: gr.Request, evt: gr.SelectData) -> tuple[Any, ...]:
            # The clicked history image in the main viewer, and its settings in the form.
            if evt.index >= len(entries):
                return tuple(gr.skip() for _ in range(4 + len(form_fields)))
            entry = entries[evt.index]
            lang = language_of(request)
            viewer = gr.Gallery(value=gallery_items(images, lang, [entry]), selected_index=0)
            return (viewer, [entry], 0, entry["parameters"], *_form_values(entry["params"]))

        past.select(
            view,
            history,
            [gallery, shown, selected, parameters, *form_fields],
            api_name=False,
            queue=False,
            show_progress="hidden",
        )

        # -- on load: the model's state, the history kept in the browser, words ----------
        def model_state(request: gr.Request) -> tuple[Any, Any]:
            # The timer polls only until the model is ready (or has failed).
            if engine.state == EngineState.READY:
                return gr.Markdown(visible=False), gr.Timer(active=False)
            if engine.error:
                text = say(language_of(request), "model_failed", reason=engine.error)
                return gr.Markdown(text, visible=True), gr.Timer(active=False)
            return gr.Markdown(t(f"state_{engine.state}"), visible=True), gr.Timer(active=True)

        state_timer = gr.Timer(2.0)
        state_timer.tick(model_state, None, [loading, state_timer], api_name=False, queue=False)
        ui.load(model_state, None, [loading, state_timer], api_name=False, queue=False)

        async def restore(stored: Any, request: gr.Request) -> tuple[Any, ...]:
            lang = language_of(request)
            kept = await revalidate(service, namespace_of(request), stored)
            return (
                kept,
                kept,
                gallery_items(images, lang, kept),
                gr.Dropdown(choices=_preset_choices(lang)),
                gr.Dropdown(choices=_normalization_choices(lang)),
            )

        ui.load(
            restore,
            stored_history,
            [history, stored_history, past, preset, normalization],
            api_name=False,
            queue=False,
        )

        async def refresh_stats(request: gr.Request) -> tuple[Any, Any, str]:
            lang = language_of(request)
            stats = await asyncio.to_thread(service.stats)
            plot = gr.LinePlot(value=timeline.frame(lang), **plot_labels(lang))
            return plot, tiers_frame(lang, stats), latency_text(lang, stats)

        stats_timer = gr.Timer(STATS_REFRESH_S)
        stats_outputs = [requests_plot, tiers_table, latency]
        stats_timer.tick(
            refresh_stats, None, stats_outputs, api_name=False, queue=False, show_progress="hidden"
        )
        ui.load(refresh_stats, None, stats_outputs, api_name=False, queue=False)
    return ui


def _note(name: str) -> gr.Markdown:
    """The note beside a field (hidden while it has nothing to say)."""
    return gr.Markdown(visible=False, elem_id=f"{name.replace('_', '-')}-note", elem_classes=["field-note"])


def _preset_choices(lang: str) -> list[tuple[str, str]]:
    return [(f"{size} ({ratio})", size) for size, ratio in PRESETS] + [(say(lang, "custom"), CUSTOM)]


def _normalization_choices(lang: str) -> list[tuple[str, str]]:
    return [(say(lang, f"norm_{mode}"), mode) for mode in NORMALIZATIONS]


def _form_values(p: dict[str, Any]) -> tuple[Any, ...]:
    """The form's fields (as `form_fields` lists them) set to an entry's parameters."""
    size = f"{p['width']}x{p['height']}"
    return (
        p["prompt"],
        p["negative_prompt"],
        p["seed"],
        size if size in PRESET_SIZES else CUSTOM,
        p["width"],
        p["height"],
        p["steps"],
        p["guidance_scale"],
        p["prompt_normalization"],
    )


def _preset_size(preset: str) -> tuple[Any, ...]:
    hidden = gr.Markdown(visible=False)
    if preset == CUSTOM:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    w, h = (int(v) for v in preset.split("x"))
    return w, h, hidden, hidden


def _snapper(engine: Engine, name: str) -> Any:
    """On leaving the width or height box: the nearest valid size, and a note saying so."""

    def snap_on_blur(width: float | None, height: float | None, request: gr.Request) -> tuple[Any, Any, Any]:
        low, high = size_limits(engine)
        value, note = snap(language_of(request), width if name == "width" else height, low, high)
        if not note:
            # Unchanged: set nothing, or this answer could undo what was typed since.
            return gr.skip(), gr.Markdown(visible=False), gr.skip()
        sizes = {"width": width, "height": height, name: value}
        return value, gr.Markdown(note, visible=True), size_preset(sizes["width"], sizes["height"])

    return snap_on_blur
