"""The UI's generate event as an API for gradio_client: `api_name="generate"`, its
keyword parameters named like the request fields (DESIGN.md).

Unlike the page's Generate (web/ui_run.py), which never raises, this answers bad
input and failures as Gradio errors, an API's way, with the message of the shared
failure table (web/errors.py), and in English.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import gradio as gr
from gradio.i18n import I18nData
from pydantic import ValidationError

from pipeline import limits
from pipeline.engine import Engine
from pipeline.errors import RequestInvalid
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from web.errors import EXPECTED, user_message
from web.ui_history import entries_for, gallery, merge, status_line
from web.ui_images import UiImages, namespace_of
from web.ui_run import progress_reporter
from web.ui_text import EN

Outputs = tuple[list[tuple[str, str]], str, list[dict[str, Any]], list[tuple[str, str]]]


def generate_api(
    service: GenerationService, engine: Engine, images: UiImages
) -> Callable[..., Awaitable[Outputs]]:
    """The event's handler: its inputs are `CreateTab.form`'s, in that order."""

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
    ) -> Outputs:
        """(gallery, status line, history, history gallery); bad input and failures are
        Gradio errors naming the problem."""
        namespace = namespace_of(request)
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
                progress=progress_reporter(progress, "en"),
            )
        except (ValidationError, *EXPECTED) as exc:
            raise gr.Error(user_message(exc)) from None
        entries = entries_for(images, namespace, results, prompt_normalization, engine.identity)
        history = merge(entries, history)
        return (
            gallery(images, "en", entries),
            status_line("en", entries),
            history,
            gallery(images, "en", history),
        )

    return generate


def _whole(field: str, value: float | None, default: int) -> int:
    """A whole number from a Gradio number or slider (floats, or NaN, infinities and
    fractions from an API caller); RequestInvalid naming the field for those."""
    if value is None:
        return default
    if not math.isfinite(value):
        raise RequestInvalid(field, f"{field} must be a finite whole number (got {value})")
    if value != int(value):  # 8.5 steps is a mistake to say, not to round away
        raise RequestInvalid(field, f"{field} must be a whole number (got {value})")
    return int(value)


def plain_api_labels(blocks: gr.Blocks) -> None:
    """Make `blocks`' API description (`/gradio_api/info`, gradio_client's
    `view_api()`) name parameters and returns by their English labels: the page's
    labels are translation keys, which Gradio would print as i18n dicts."""
    described = blocks.get_api_info

    def get_api_info(all_endpoints: bool = False, page: str | None = None) -> Any:
        info = described(all_endpoints=all_endpoints, page=page)
        for endpoints in (info.get("named_endpoints", {}), info.get("unnamed_endpoints", {})):
            for endpoint in endpoints.values():
                for item in (*endpoint.get("parameters", ()), *endpoint.get("returns", ())):
                    label = item.get("label")
                    if isinstance(label, I18nData):
                        item["label"] = EN.get(label.key, label.key)
        return info

    blocks.get_api_info = get_api_info  # type: ignore[method-assign]  # Gradio allows overriding it
