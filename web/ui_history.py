"""The UI's history: one entry per image made, kept in the session and in the browser.

An entry is plain JSON (what browser storage can hold): the image's namespace and
key, the tier and time it came with, and the parameters that made it. Paths and
captions are never stored: they are made again from the entry, on the server,
in the page's language. What comes back from browser storage is the browser's
to change, so `revalidate` keeps only entries of the caller's own namespace whose
image the cache still holds (the file route checks the namespace again on every
fetch); it grants nothing the caller could not already see.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any, get_args

from cache import Hit, is_key
from pipeline.image_metadata import a1111_parameters
from pipeline.limits import IMAGE_FORMATS, UI_HISTORY_LIMIT
from pipeline.loading import ModelIdentity
from pipeline.results import BYPASS_TIER, GENERATED, GenerationResult
from pipeline.service import GenerationService
from web.schemas import Tier
from web.ui_images import ImagePath, UiImages, for_gallery
from web.ui_lora import clean_loras
from web.ui_text import say

HISTORY_LIMIT = UI_HISTORY_LIMIT
TIERS = get_args(Tier)  # in the order the Stats tab shows them
PARAMS = {  # what an entry's parameters hold, and their types
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "width": int,
    "height": int,
    "steps": int,
    "guidance_scale": float,
    "prompt_normalization": str,
}

Entry = dict[str, Any]


def entries_for(
    images: UiImages,
    namespace: str,
    results: list[GenerationResult],
    normalization: str,
    identity: ModelIdentity | None,
) -> list[Entry]:
    """History entries for the results of one run. An image that must not be stored
    gets its one-off path now (`UiImages.unstored_path` keeps its bytes for the browser)."""
    out = []
    for r in results:
        params = {
            "prompt": r.request.prompt,
            "negative_prompt": r.request.negative_prompt,
            "seed": r.seed,
            "width": r.request.width,
            "height": r.request.height,
            "steps": r.request.steps,
            "guidance_scale": r.request.guidance_scale,
            "prompt_normalization": normalization,
            "loras": [{"name": lora.name, "scale": lora.scale} for lora in r.loras],
        }
        entry = {
            "ns": namespace,
            "key": r.key,
            "ext": r.entry.ext,
            "cache": r.cache,
            "duration": round(r.duration, 6),
            "at": round(time.time()),
            "params": params,
            "parameters": a1111_parameters(r.request, identity, r.loras) if identity else "",
        }
        if r.cache == BYPASS_TIER:
            entry["path"] = images.unstored_path(namespace, r)
        out.append(entry)
    return out


def merge(new: list[Entry], history: list[Entry]) -> list[Entry]:
    """`new` first, then the older entries that are not the same image, at most HISTORY_LIMIT."""
    shown = {(e["key"], e["params"]["seed"]) for e in new}
    return (new + [e for e in history if (e["key"], e["params"]["seed"]) not in shown])[:HISTORY_LIMIT]


def persistable(history: list[Entry]) -> list[Entry]:
    """What goes into browser storage: not the images that must not be stored (their
    prompts are kept nowhere, and their bytes are gone after a few minutes)."""
    return [e for e in history if e["cache"] != BYPASS_TIER]


def gallery(images: UiImages, lang: str, entries: list[Entry]) -> list[tuple[Path, str]]:
    """(path, caption) of each entry, for a gr.Gallery."""
    return [(for_gallery(path_of(images, e)), caption(lang, e)) for e in entries]


def path_of(images: UiImages, entry: Entry) -> ImagePath:
    if "path" in entry:  # an image that must not be stored: its one-off token path
        return entry["path"]
    params = entry["params"]
    return images.stored_path(entry["ns"], entry["key"], entry["ext"], params["seed"], params["prompt"])


def caption(lang: str, entry: Entry) -> str:
    """'seed 42 · memory hit · 1.2 ms' or 'seed 42 · miss · generated in 0.91 s'."""
    return f"{say(lang, 'seed', seed=entry['params']['seed'])} · {tier_and_time(lang, entry)}"


def tier_and_time(lang: str, entry: Entry) -> str:
    tier = say(lang, f"tier_{entry['cache']}")
    took = took_text(lang, entry["duration"])
    if entry["cache"] in GENERATED:
        return say(lang, "generated", tier=tier, took=took)
    return say(lang, "hit", tier=tier, took=took)


def took_text(lang: str, seconds: float) -> str:
    return say(lang, "ms", n=seconds * 1000) if seconds < 1 else say(lang, "s", n=seconds)


def status_line(lang: str, entries: list[Entry]) -> str:
    """One line for the run: the tier(s) and time, and the seed(s) used."""
    seeds = [str(e["params"]["seed"]) for e in entries]
    used = say(lang, "seeds", seeds=", ".join(seeds)) if len(seeds) > 1 else say(lang, "seed", seed=seeds[0])
    tiers = sorted({e["cache"] for e in entries})
    if len(tiers) == 1:
        return f"{tier_and_time(lang, entries[0])} · {used}"
    took = took_text(lang, max(e["duration"] for e in entries))
    return f"{' + '.join(say(lang, f'tier_{t}') for t in tiers)} · {took} · {used}"


async def revalidate(service: GenerationService, namespace: str, stored: Any) -> list[Entry]:
    """The entries of `stored` (from browser storage: anything at all) that are well
    formed, of `namespace`, and whose image the cache still holds."""
    if not isinstance(stored, list):
        return []
    candidates = [
        e for e in map(_well_formed, stored[:HISTORY_LIMIT]) if e is not None and e["ns"] == namespace
    ]
    # The stored image is what must still be there: any format is made from it when shown.
    hits = await asyncio.gather(*(service.lookup(namespace, e["key"]) for e in candidates))
    return [e for e, hit in zip(candidates, hits, strict=True) if isinstance(hit, Hit)]


def _well_formed(raw: Any) -> Entry | None:
    if not isinstance(raw, dict):
        return None
    key, ext, tier, params = raw.get("key"), raw.get("ext"), raw.get("cache"), raw.get("params")
    if not (isinstance(key, str) and is_key(key) and ext in IMAGE_FORMATS and tier in TIERS):
        return None
    if tier == BYPASS_TIER or not isinstance(params, dict) or not isinstance(raw.get("ns"), str):
        return None
    clean: dict[str, Any] = {}
    for name, kind in PARAMS.items():
        value = params.get(name)
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        if (
            not isinstance(value, kind)
            or isinstance(value, bool)
            or (kind is float and not math.isfinite(value))
        ):
            return None
        clean[name] = value
    if (loras := clean_loras(params.get("loras"))) is None:
        return None
    clean["loras"] = loras
    duration = raw.get("duration")
    if not isinstance(duration, int | float) or isinstance(duration, bool) or not math.isfinite(duration):
        return None
    parameters = raw.get("parameters")
    at = raw.get("at")  # (entries kept before times were kept have none)
    return {
        "ns": raw["ns"],
        "key": key,
        "ext": ext,
        "cache": tier,
        "duration": float(duration),
        "at": at if isinstance(at, int) and not isinstance(at, bool) and at >= 0 else None,
        "params": clean,
        "parameters": parameters if isinstance(parameters, str) else "",
    }
