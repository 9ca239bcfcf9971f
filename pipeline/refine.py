"""The `refine` mode of near-repeats: img2img from the nearest cached image.

A request with `similar_threshold` and `similar_mode="refine"` whose nearest stored
image (same namespace and size, text-to-image without LoRAs: what the near-repeats
index holds) is at or above the threshold is made as an img2img edit of that image
under the request's own prompt, with strength REFINE_STRENGTH: diffusers skips the
first `steps - steps * strength` denoising steps (pipeline.editing.steps_run), so
the image costs about half the transformer's work (NIRVANA, NSDI'24, and
CacheGenius start from a similar prompt's cached work the same way). It is never
the default, and never unlabelled: the result names the image it was refined from,
that image's prompt and the similarity. Its key's `inputs` section holds the source
image's pixel hash, the strength and the resize rule (pipeline.image_input), so it
can never be taken for a plain generation of the prompt; the same edit asked for
through /api/edit is the same image and shares the key.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from cache import Entry
from pipeline.image_input import ImageInput, edit_input

# What a request with `similar_threshold` does with the nearest stored image above it:
# serve it as it is (`cache: similar`), or refine it under the new prompt.
SimilarMode = Literal["serve", "refine"]
SIMILAR_MODES: tuple[str, ...] = ("serve", "refine")
# How much of the denoising a refinement redoes: half the steps (8 -> 4 with Turbo's
# settings); enough to follow a reworded prompt, little enough to keep the source's
# composition.
REFINE_STRENGTH = 0.5


async def refine_input(stored: Entry) -> ImageInput:
    """The img2img input of a refinement of the stored image `stored` (its PNG decoded
    off the event loop, as an upload would be)."""
    return await asyncio.to_thread(edit_input, stored.data, "similar_mode", strength=REFINE_STRENGTH)
