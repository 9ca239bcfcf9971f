"""The Gradio UI: one page over GenerationService; its generate event is also an API."""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from collections import deque
from typing import Any

import gradio as gr
from pydantic import ValidationError

from cache import DEFAULT_NAMESPACE
from pipeline import limits
from pipeline.engine import Engine, EngineState
from pipeline.errors import QueueFull, RequestInvalid
from pipeline.request import GenerationRequest, random_seed
from pipeline.results import BYPASS_TIER, MISS_TIER, GenerationResult
from pipeline.service import GenerationService
from web.errors import EXPECTED, user_message
from web.ui_images import UiImages
from web.ui_text import EXAMPLES, I18N

PRESETS = [
    "1024x1024",
    "1152x896",
    "896x1152",
    "1152x864",
    "864x1152",
    "1248x832",
    "832x1248",
    "1280x720",
    "720x1280",
    "1344x576",
    "576x1344",
]
CUSTOM = "Custom"
HISTORY_LIMIT = 48
# Gradio's own temp files (none of ours: see web/ui_images.py) are kept this long.
UI_FILE_TTL_S = 3600
STATS_REFRESH_S = 3.0


def create_ui(service: GenerationService, engine: Engine, images: UiImages, *, demo_model: bool) -> gr.Blocks:
    t = I18N
    stats_history = _StatsHistory()
    with gr.Blocks(title="Z-Image-Turbo", delete_cache=(UI_FILE_TTL_S, UI_FILE_TTL_S)) as ui:
        gr.Markdown("# Z-Image-Turbo")
        gr.Markdown(t("demo_banner"), visible=demo_model, elem_id="demo-banner")
        loading = gr.Markdown(elem_id="model-state", visible=False)
        history = gr.State([])

        with gr.Tab(t("tab_generate"), id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(
                        label=t("prompt"), lines=3, placeholder=t("prompt_placeholder"), elem_id="prompt"
                    )
                    gr.Examples(EXAMPLES, inputs=prompt, label=t("examples"))
                    preset = gr.Dropdown([*PRESETS, CUSTOM], value=PRESETS[0], label=t("resolution"))
                    with gr.Row():
                        width, height = (
                            gr.Number(
                                limits.DEFAULT_SIZE,
                                label=t(side),
                                precision=0,
                                step=limits.SIZE_MULTIPLE,
                                minimum=limits.MIN_SIZE,
                                maximum=limits.MAX_SIZE,
                                elem_id=side,
                            )
                            for side in ("width", "height")
                        )
                    with gr.Row():
                        seed = gr.Number(
                            limits.DEFAULT_SEED,
                            label=t("seed"),
                            precision=0,
                            minimum=limits.RANDOM_SEED,
                            maximum=limits.MAX_SEED,
                            elem_id="seed",
                        )
                        dice = gr.Button(t("random_seed"), size="sm", elem_id="random-seed")
                    with gr.Row():
                        batch_size = gr.Slider(
                            1, limits.MAX_UI_BATCH, value=1, step=1, label=t("batch_size"), elem_id="batch"
                        )
                        no_cache = gr.Checkbox(False, label=t("bypass_cache"), elem_id="bypass")
                    with gr.Accordion(t("advanced"), open=False):
                        steps = gr.Slider(
                            limits.MIN_STEPS,
                            limits.MAX_STEPS,
                            value=limits.DEFAULT_STEPS,
                            step=1,
                            label=t("steps"),
                            elem_id="steps",
                        )
                        guidance_scale = gr.Slider(
                            0.0,
                            limits.MAX_GUIDANCE,
                            value=limits.DEFAULT_GUIDANCE,
                            step=0.5,
                            label=t("guidance"),
                        )
                        negative_prompt = gr.Textbox("", label=t("negative_prompt"), info=t("negative_note"))
                        normalization = gr.Dropdown(
                            list(limits.NORMALIZATIONS),
                            value=service.normalization,
                            label=t("normalization"),
                            info=t("normalization_note"),
                        )
                    run = gr.Button(t("generate"), variant="primary", elem_id="generate")
                with gr.Column(scale=1):
                    gallery = gr.Gallery(
                        label=t("results"),
                        columns=2,
                        object_fit="contain",
                        height="auto",
                        interactive=False,
                        elem_id="result",
                    )
                    status = gr.Markdown(elem_id="status")
            past = gr.Gallery(
                label=t("history"), columns=6, height="auto", allow_preview=False, elem_id="history"
            )
            # Gradio copies a file it is handed into the component's cache dir, and
            # keeps the path (to delete it later) when it is already there. Our paths
            # are not files (web/ui_images.py): with a cache dir of their own that
            # holds none of them, Gradio passes them through untouched and tracks
            # nothing for ever.
            for shown in (gallery, past):
                shown.GRADIO_CACHE = str(images.root.parent / "untracked")

        with gr.Tab(t("tab_stats"), id="stats"):
            hit_plot = gr.LinePlot(
                x="time",
                y="hit_rate",
                color="tier",
                label=t("hit_rate_plot"),
                y_lim=[0, 1],
                elem_id="hit-plot",
            )
            tiers_table = gr.Dataframe(label=t("tiers_table"), interactive=False, elem_id="tiers")
            latency = gr.Markdown(elem_id="latency")

        async def generate(
            prompt: str,
            negative_prompt: str,
            seed: float,
            width: float,
            height: float,
            steps: float,
            guidance_scale: float,
            batch_size: float,
            no_cache: bool,
            prompt_normalization: str,
            history: list[dict[str, Any]],
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for it)
        ) -> tuple[list[tuple[str, str]], str, list[dict[str, Any]], list[tuple[str, str]]]:
            # Steps are reported from the engine's thread; Gradio's progress reads
            # context variables of this event, so report from the loop, in its context.
            loop, context = asyncio.get_running_loop(), contextvars.copy_context()

            def on_step(done: int, total: int) -> None:
                loop.call_soon_threadsafe(
                    lambda: progress((done, total), desc="denoising", unit="steps"), context=context
                )

            namespace = getattr(request, "username", None) or DEFAULT_NAMESPACE
            try:
                req = GenerationRequest(
                    prompt=prompt or "",
                    negative_prompt=negative_prompt or "",
                    seed=_whole("seed", seed, limits.DEFAULT_SEED),
                    width=_whole("width", width, 0),
                    height=_whole("height", height, 0),
                    steps=_whole("steps", steps, 0),
                    guidance_scale=float(guidance_scale or 0.0),
                )
                results = await service.generate_batch(
                    req,
                    max(1, min(limits.MAX_UI_BATCH, _whole("batch_size", batch_size, 1))),
                    namespace=namespace,
                    no_cache=bool(no_cache),
                    normalization=prompt_normalization or None,  # type: ignore[arg-type]
                    progress=on_step,
                )
            except QueueFull as exc:
                raise gr.Error(
                    f"The server is busy ({exc.depth} generations waiting). Please try again shortly."
                ) from None
            except (ValidationError, *EXPECTED) as exc:
                raise gr.Error(user_message(exc)) from None
            items = [(images.path_for(namespace, r), caption(r)) for r in results]
            params = {
                "prompt": prompt,
                "negative_prompt": negative_prompt or "",
                "width": int(width),
                "height": int(height),
                "steps": int(steps),
                "guidance_scale": float(guidance_scale),
                "prompt_normalization": prompt_normalization,
            }
            new = [
                {"path": p, "caption": c, "params": params | {"seed": r.seed}}
                for (p, c), r in zip(items, results, strict=True)
            ]
            shown = {item["path"] for item in new}
            history = (new + [h for h in history if h["path"] not in shown])[:HISTORY_LIMIT]
            return items, status_line(results), history, [(h["path"], h["caption"]) for h in history]

        # concurrency_limit=None: Gradio would otherwise run one event at a time,
        # and a cache hit would wait behind a running generation. The engine
        # serialises the model itself.
        inputs = [
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
        outputs = [gallery, status, history, past]
        run.click(generate, inputs, outputs, api_name="generate", concurrency_limit=None)
        prompt.submit(generate, inputs, outputs, api_name=False, concurrency_limit=None)
        preset.change(_preset_size, preset, [width, height], api_name=False, queue=False)
        for box in (width, height):  # typing a size picks its preset, or Custom
            box.input(_size_preset, [width, height], preset, api_name=False, queue=False)
        dice.click(random_seed, None, seed, api_name=False, queue=False)

        def restore(history: list[dict[str, Any]], evt: gr.SelectData) -> tuple[Any, ...]:
            p = history[evt.index]["params"]
            size = f"{p['width']}x{p['height']}"
            return (
                p["prompt"],
                p["negative_prompt"],
                p["seed"],
                size if size in PRESETS else CUSTOM,
                p["width"],
                p["height"],
                p["steps"],
                p["guidance_scale"],
                p["prompt_normalization"],
            )

        past.select(
            restore,
            history,
            [prompt, negative_prompt, seed, preset, width, height, steps, guidance_scale, normalization],
            api_name=False,
            queue=False,
        )

        def model_state() -> tuple[Any, Any]:
            # The timer polls only until the model is ready (or has failed).
            if engine.state == EngineState.READY:
                return gr.Markdown(visible=False), gr.Timer(active=False)
            if engine.error:
                text = f"**The model failed to load:** {engine.error}"
                return gr.Markdown(text, visible=True), gr.Timer(active=False)
            return gr.Markdown(t(f"state_{engine.state}"), visible=True), gr.Timer(active=True)

        state_timer = gr.Timer(2.0)
        state_timer.tick(model_state, None, [loading, state_timer], api_name=False, queue=False)
        ui.load(model_state, None, [loading, state_timer], api_name=False, queue=False)

        async def refresh_stats() -> tuple[Any, Any, str]:
            stats = await asyncio.to_thread(service.stats)
            return stats_history.add(stats), _tiers_frame(stats), _latency_text(stats)

        stats_timer = gr.Timer(STATS_REFRESH_S)
        stats_timer.tick(refresh_stats, None, [hit_plot, tiers_table, latency], api_name=False, queue=False)
        ui.load(refresh_stats, None, [hit_plot, tiers_table, latency], api_name=False, queue=False)
    return ui


def caption(result: GenerationResult) -> str:
    """'seed 42 · memory hit · 1.2 ms' or 'seed 42 · miss · generated in 0.91 s'."""
    return f"seed {result.seed} · {_tier_and_time(result)}"


def status_line(results: list[GenerationResult]) -> str:
    """One line for the run: the tier(s) and time, and the seed(s) used."""
    seeds = ("seeds " if len(results) > 1 else "seed ") + ", ".join(str(r.seed) for r in results)
    tiers = sorted({r.cache for r in results})
    if len(tiers) == 1:
        return f"{_tier_and_time(results[0])} · {seeds}"
    took = max(r.duration for r in results)
    return f"{' + '.join(tiers)} · {_took(took)} · {seeds}"


def _tier_and_time(result: GenerationResult) -> str:
    if result.cache == MISS_TIER:
        return f"miss · generated in {_took(result.duration)}"
    if result.cache == BYPASS_TIER:
        return f"bypass · generated in {_took(result.duration)}"
    return f"{result.cache} hit · {_took(result.duration)}"


def _took(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _preset_size(preset: str) -> tuple[Any, Any]:
    if preset == CUSTOM:
        return gr.update(), gr.update()
    w, h = (int(v) for v in preset.split("x"))
    return w, h


def _size_preset(width: float | None, height: float | None) -> str:
    size = f"{int(width or 0)}x{int(height or 0)}"
    return size if size in PRESETS else CUSTOM


def _whole(field: str, value: float | None, default: int) -> int:
    """A whole number from a Gradio number or slider (floats, or NaN and infinities
    from an API caller); RequestInvalid naming the field for those."""
    if value is None:
        return default
    if not math.isfinite(value):
        raise RequestInvalid(field, f"{field} must be a finite whole number (got {value})")
    return int(value)


class _StatsHistory:
    """Samples of each tier's share of requests over time, for the Stats plot;
    shared by every open page, at most one sample per refresh period."""

    def __init__(self, keep: int = 200) -> None:
        self.rows: deque[dict[str, Any]] = deque(maxlen=keep)
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, stats: dict[str, Any]) -> Any:
        import pandas as pd

        now = time.time()
        with self._lock:
            if now - self._last >= STATS_REFRESH_S * 0.9 and stats["requests"]:
                self._last = now
                stamp = pd.Timestamp(now, unit="s")
                for name, tier in stats["tiers"].items():
                    self.rows.append(
                        {"time": stamp, "tier": name, "hit_rate": tier["hits"] / stats["requests"]}
                    )
            return pd.DataFrame(list(self.rows), columns=["time", "tier", "hit_rate"])


def _tiers_frame(stats: dict[str, Any]) -> Any:
    import pandas as pd

    rows = [
        {
            "tier": name,
            "hits": tier["hits"],
            "entries": tier.get("entries"),
            "MiB": _mib(tier.get("bytes")),
            "errors": tier["errors"],
        }
        for name, tier in stats["tiers"].items()
    ]
    return pd.DataFrame(rows, columns=["tier", "hits", "entries", "MiB", "errors"])


def _mib(size: int | None) -> float | None:
    return None if size is None else round(size / (1 << 20), 2)


def _latency_text(stats: dict[str, Any]) -> str:
    def fmt(p: dict[str, Any]) -> str:
        if not p["count"]:
            return "—"
        return f"p50 {_took(p['p50'])} · p95 {_took(p['p95'])} ({p['count']})"

    lat = stats["latency"]
    return (
        f"**Requests** {stats['requests']} · **hit rate** {stats['hit_rate']:.0%} · "
        f"**generations** {stats['generations']} · **queue** {stats['queue_depth']}\n\n"
        f"**Generation latency** {fmt(lat['generation'])}  \n**Hit latency** {fmt(lat['hit'])}"
    )
