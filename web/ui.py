"""The Gradio UI: one page over GenerationService, its generate event also an API."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError

from pipeline.engine import READY, Engine, GenerationFailed, ModelUnavailable, QueueFull
from pipeline.request import MAX_SEED, GenerationRequest, RequestInvalid
from pipeline.service import GenerationResult, GenerationService

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
TIER_LABELS = {
    "memory": "memory hit",
    "disk": "disk hit",
    "redis": "redis hit",
    "miss": "generated",
    "bypass": "generated (cache bypassed)",
}
DEMO_BANNER = (
    "**Demo model.** No CUDA GPU was found, so this server runs the tiny random-weight "
    "model: images are noise, but the cache, the UI and the API behave exactly as in production."
)
# Files handed to the browser are kept this long in Gradio's cache.
UI_FILE_TTL_S = 3600


def create_ui(service: GenerationService, engine: Engine, *, demo_model: bool) -> gr.Blocks:
    with gr.Blocks(title="Z-Image-Turbo", delete_cache=(UI_FILE_TTL_S, UI_FILE_TTL_S)) as ui:
        gr.Markdown("# Z-Image-Turbo")
        gr.Markdown(DEMO_BANNER, visible=demo_model, elem_id="demo-banner")
        loading = gr.Markdown(elem_id="model-state", visible=False)
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(
                    label="Prompt", lines=3, placeholder="A red fox in fresh snow, morning light"
                )
                negative_prompt = gr.Textbox(
                    label="Negative prompt", info="Only used when guidance > 0 (Turbo runs with 0)."
                )
                preset = gr.Dropdown([*PRESETS, CUSTOM], value=PRESETS[0], label="Resolution")
                with gr.Row():
                    width = gr.Number(1024, label="Width", precision=0, step=16, minimum=64, maximum=2048)
                    height = gr.Number(1024, label="Height", precision=0, step=16, minimum=64, maximum=2048)
                with gr.Row():
                    seed = gr.Number(
                        42, label="Seed (-1 = random)", precision=0, minimum=-1, maximum=MAX_SEED
                    )
                    dice = gr.Button("Random seed", size="sm")
                steps = gr.Slider(1, 50, value=8, step=1, label="Steps")
                guidance_scale = gr.Slider(0.0, 20.0, value=0.0, step=0.5, label="Guidance")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image", type="filepath", format="png", interactive=False, elem_id="result"
                )
                status = gr.Markdown(elem_id="status")

        async def generate(
            prompt: str,
            negative_prompt: str,
            seed: float,
            width: float,
            height: float,
            steps: float,
            guidance_scale: float,
        ) -> tuple[str, str]:
            try:
                request = GenerationRequest(
                    prompt=prompt or "",
                    negative_prompt=negative_prompt or "",
                    seed=int(seed if seed is not None else 42),
                    width=int(width or 0),
                    height=int(height or 0),
                    steps=int(steps or 0),
                    guidance_scale=float(guidance_scale or 0.0),
                )
                result = await service.generate(request)
            except ValidationError as exc:
                raise gr.Error("; ".join(_error_text(e) for e in exc.errors())) from None
            except (RequestInvalid, QueueFull, ModelUnavailable, GenerationFailed) as exc:
                raise gr.Error(str(exc)) from None
            path = await asyncio.to_thread(_publish, Path(ui.GRADIO_CACHE), result)
            return str(path), status_line(result)

        # concurrency_limit=None: Gradio would otherwise run one event at a time,
        # and a cache hit would wait behind a running generation. The engine
        # serialises the model itself.
        run.click(
            generate,
            inputs=[prompt, negative_prompt, seed, width, height, steps, guidance_scale],
            outputs=[image, status],
            api_name="generate",
            concurrency_limit=None,
        )
        prompt.submit(
            generate,
            inputs=[prompt, negative_prompt, seed, width, height, steps, guidance_scale],
            outputs=[image, status],
            api_name=False,
            concurrency_limit=None,
        )
        preset.change(_preset_size, preset, [width, height], api_name=False, queue=False)
        dice.click(lambda: secrets.randbelow(MAX_SEED + 1), None, seed, api_name=False, queue=False)

        def model_state() -> tuple[str, Any]:
            # The timer polls only until the model is ready (or has failed).
            if engine.state == READY:
                return gr.Markdown(visible=False), gr.Timer(active=False)
            if engine.error:
                text = f"**The model failed to load:** {engine.error}"
                return gr.Markdown(text, visible=True), gr.Timer(active=False)
            text = f"**Model {engine.state}…** Cached images are served already; new ones wait until it is ready."
            return gr.Markdown(text, visible=True), gr.Timer(active=True)

        timer = gr.Timer(2.0)
        timer.tick(model_state, None, [loading, timer], api_name=False, queue=False)
        ui.load(model_state, None, [loading, timer], api_name=False, queue=False)
    return ui


def status_line(result: GenerationResult) -> str:
    """'memory hit · 1.2 ms · seed 42' or 'generated · 0.91 s · seed 42'."""
    took = f"{result.duration * 1000:.1f} ms" if result.duration < 1 else f"{result.duration:.2f} s"
    return f"{TIER_LABELS.get(result.cache, result.cache)} · {took} · seed {result.seed}"


def _preset_size(preset: str) -> tuple[Any, Any]:
    if preset == CUSTOM:
        return gr.update(), gr.update()
    w, h = (int(v) for v in preset.split("x"))
    return w, h


def _publish(cache_dir: Path, result: GenerationResult) -> Path:
    """Write the image where Gradio serves files from (no copy, no re-encoding); once per key."""
    target = cache_dir / "zimage" / f"{result.key}.{result.entry.ext}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".")
        with os.fdopen(fd, "wb") as f:
            f.write(result.entry.data)
        os.replace(tmp, target)
    return target


def _error_text(error: Any) -> str:
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    field = ".".join(str(p) for p in error.get("loc", ()))
    return msg if field and field in msg else f"{field}: {msg}"
