"""The UI's near-repeats panel, "Already made for similar prompts" (issue 27).

On a miss, while its image is made, the panel shows up to 4 stored images whose
prompts are like the new one, each captioned with its similarity and prompt. A
click uses that image: it goes to the viewer and the history (tier `similar`),
this page stops waiting for its own generation as Interrupt stops it (nothing of
it is stored, unless another caller shares it), and the service counts one
suggestion used (`zimage_similar_used`, the Stats tab).

Generate runs in two stages: `SimilarPanel.look` first (GenerationService.near_repeats:
the list the miss's own `similar` will carry, counted by the miss, not here), then
the generation (web/ui_run.py). Only the caller's namespace (its login) is ever
asked, and a click looks the image up again in that namespace: a page never shows
or serves another namespace's prompt or image. Neither stage raises: a bad form is
the generation's to say, and a failed look shows no panel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import gradio as gr
from pydantic import ValidationError

from cache import Hit
from pipeline.limits import DEFAULT_GUIDANCE, MAX_UI_BATCH
from pipeline.png_info import image_parameters, parse_parameters
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from pipeline.suggestions import SIMILAR_TIER
from web.errors import EXPECTED
from web.ui_form import NOTED, check_form, size_limits
from web.ui_history import merge
from web.ui_images import UiImages, for_gallery, namespace_of
from web.ui_layout import CreateTab
from web.ui_run import UiRun, result_outputs, shown_result
from web.ui_text import language_of, say

log = logging.getLogger(__name__)


class SimilarPanel:
    """The panel's two events over `service`, for the page of `tab` whose generations
    `runs` makes."""

    def __init__(self, service: GenerationService, images: UiImages, runs: UiRun, tab: CreateTab) -> None:
        self.service = service
        self.images = images
        self.runs = runs
        self.tab = tab

    @property
    def outputs(self) -> list[Any]:
        """What `look` updates."""
        return [self.tab.similar_box, self.tab.similar_gallery, self.tab.similar_found]

    @property
    def use_outputs(self) -> list[Any]:
        """What `use` may update."""
        t = self.tab
        return [
            *result_outputs(t),
            t.similar_gallery,
            t.similar_found,
        ]

    async def look(self, inputs: dict[Any, Any], request: gr.Request) -> tuple[Any, Any, Any]:
        """Generate's first stage: the panel with the near-repeats of this form's prompt
        in the caller's namespace, or hidden (none, a hit, a bad form, bypass)."""
        hidden = (gr.Column(visible=False), [], [])
        t, lang = self.tab, language_of(request)
        values = {name: inputs[component] for name, component in t.form.items()}
        # With LoRAs, no near-repeat is what this form makes (the service looks for none).
        if values["no_cache"] or t.loras.specs(inputs) or self.service.suggestions is None:
            return hidden
        low, high = size_limits(self.runs.engine)
        check = check_form(lang, {name: values[name] for name in NOTED}, low, high, MAX_UI_BATCH)
        if check.errors:
            return hidden
        namespace = namespace_of(request)
        try:
            asked = GenerationRequest(**{n: check.values[n] for n in NOTED if n != "batch_size"})
            matches = await self.service.near_repeats(
                asked, namespace=namespace, normalization=values["prompt_normalization"] or None
            )
        except (ValidationError, *EXPECTED):
            return hidden
        except Exception:  # a suggestion is never worth a broken page
            log.exception("near-repeats: the UI's look failed")
            return hidden
        found, items = [], []
        for match in matches:
            hit = await self.service.lookup(namespace, match.key)
            if not isinstance(hit, Hit):
                continue
            seed = hit.entry.meta.get("seed", 0)
            path = self.images.stored_path(namespace, match.key, hit.entry.ext, seed, match.prompt)
            items.append(
                (for_gallery(path), say(lang, "similar_caption", score=match.score, prompt=match.prompt))
            )
            found.append({"key": match.key, "prompt": match.prompt, "score": match.score})
        if not found:
            return hidden
        return gr.Column(visible=True), items, found

    async def use(
        self,
        found: list[dict[str, Any]],
        normalization: str,
        history: list[dict[str, Any]],
        tz: str,
        request: gr.Request,
        evt: gr.SelectData,
    ) -> dict[Any, Any]:
        """A suggestion clicked: that image in the viewer and on top of the history, this
        page's generation stopped, one suggestion counted as used."""
        t, lang = self.tab, language_of(request)
        if not found or evt.index >= len(found):
            return {}
        started = time.perf_counter()
        picked, namespace = found[evt.index], namespace_of(request)
        hit = await self.service.lookup(namespace, picked["key"])
        if not isinstance(hit, Hit):  # evicted since it was shown
            rest = [f for f in found if f is not picked]
            return {t.notice: gr.Markdown(say(lang, "similar_gone")), t.similar_found: rest}
        await self.runs.choose(request)
        if self.service.suggestions is not None:
            self.service.suggestions.count("used")
        text = await asyncio.to_thread(image_parameters, hit.entry.data) or ""
        stored, meta = parse_parameters(text), hit.entry.meta
        params = {
            "prompt": picked["prompt"],
            "negative_prompt": stored.get("negative_prompt", ""),
            "seed": meta.get("seed", stored.get("seed", 0)),
            "width": meta.get("width", stored.get("width", 0)),
            "height": meta.get("height", stored.get("height", 0)),
            "steps": meta.get("steps", stored.get("steps", 0)),
            "guidance_scale": stored.get("guidance_scale", DEFAULT_GUIDANCE),
            "prompt_normalization": normalization,
        }
        entry = {
            "ns": namespace,
            "key": picked["key"],
            "ext": hit.entry.ext,
            "cache": SIMILAR_TIER,
            "duration": round(time.perf_counter() - started, 6),
            "at": round(time.time()),
            "params": params,
            "parameters": text,
        }
        return shown_result(self.images, t, lang, tz, [entry], merge([entry], history))
