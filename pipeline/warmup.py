"""Warm-up: one short inference per size before `/ready`, and the check that the model
really answers.

The serving process hands `warm_up` to the engine, which runs it after loading and
before `/ready` turns 200 (cache hits are served meanwhile; misses wait in the
engine's bounded queue). Warming must happen in the process that serves: CUDA
kernels, autotuning and compiled graphs live in its memory, and a separate
process frees them when it exits. `python prewarm.py --check` runs `check`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline.engine import EngineState
from pipeline.errors import ModelUnavailable
from pipeline.limits import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE
from pipeline.request import CanonicalRequest, GenerationRequest

if TYPE_CHECKING:
    from pipeline.engine import Engine
    from pipeline.loading import ModelIdentity
    from pipeline.service import GenerationService

log = logging.getLogger("prewarm")

# Enough denoising steps to run every kernel (and compile every graph) the real
# 8 steps use; more would only lengthen the start.
WARMUP_STEPS = 2
# With guidance > 0 a negative prompt of another length than the prompt's makes the
# transformer take an attention mask: a graph of its own when compiled.
_WARMUP_NEGATIVE = ", ".join(
    ["blurry, low quality, oversaturated, distorted hands, watermark, jpeg artifacts"] * 6
)
_SIZE = re.compile(r"(\d+)x(\d+)")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`1024x1024,768x1344` (commas or spaces) -> [(1024, 1024), (768, 1344)], as
    (width, height). Raises ValueError naming the bad size and the rule."""
    sizes = []
    for part in re.split(r"[,\s]+", text.strip().lower()):
        if not part:
            continue
        match = _SIZE.fullmatch(part)
        if not match:
            raise ValueError(f"{part!r} is not a size; write WIDTHxHEIGHT, e.g. 1024x1024,768x1344")
        width, height = int(match[1]), int(match[2])
        for value in (width, height):
            if value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE:
                raise ValueError(
                    f"{part}: each side must be a multiple of {SIZE_MULTIPLE} in {MIN_SIZE}..{MAX_SIZE}"
                )
        if (width, height) not in sizes:
            sizes.append((width, height))
    if not sizes:
        raise ValueError("give at least one size, e.g. 1024x1024")
    return sizes


def usable_sizes(sizes: list[tuple[int, int]], identity: ModelIdentity) -> list[tuple[int, int]]:
    """The sizes within the model's range, in order; the smallest size if none is."""
    usable = [(w, h) for w, h in sizes if all(identity.min_size <= v <= identity.max_size for v in (w, h))]
    return usable or [(identity.min_size, identity.min_size)]


def warm_up(engine: Engine, identity: ModelIdentity, sizes: list[tuple[int, int]]) -> None:
    """Run one short generation per size on the engine thread, so that kernels,
    autotuning and compile caches are hot before the first user waits on them.
    Sizes outside the model's range are skipped with a warning; if none is left
    the smallest size is warmed, so that ready always means an image was made.
    With a compiled transformer, `compile_variants` of the first size follow, so
    that no request compiles after /ready."""
    usable = usable_sizes(sizes, identity)
    for w, h in sorted(set(sizes) - set(usable)):
        log.warning(
            "warm-up: skipping %dx%d, outside this model's %d..%d", w, h, identity.min_size, identity.max_size
        )
    for width, height in usable:
        started = time.perf_counter()
        engine.run_now([CanonicalRequest("warm-up", "", 0, width, height, WARMUP_STEPS, 0.0)])
        log.info("warm-up %dx%d: %.2f s", width, height, time.perf_counter() - started)
    if engine.compiled:
        for label, requests in compile_variants(*usable[0]):
            started = time.perf_counter()
            engine.run_now(requests)
            log.info("warm-up %s: %.2f s", label, time.perf_counter() - started)


def compile_variants(width: int, height: int) -> list[tuple[str, list[CanonicalRequest]]]:
    """The requests that make a compiled transformer compile every graph the service
    needs (pipeline/compile.py), beyond one image without guidance: a batch (every
    batch size from 2 shares one dynamic-shape graph) and guidance with a mask."""
    base = CanonicalRequest("warm-up", "", 0, width, height, WARMUP_STEPS, 0.0)
    return [
        ("batch of 2", [base, replace(base, seed=1)]),
        ("guidance with a mask", [replace(base, negative_prompt=_WARMUP_NEGATIVE, guidance_scale=1.5)]),
    ]


async def check(service: GenerationService, engine: Engine, sizes: list[tuple[int, int]]) -> str:
    """Wait for loading and warm-up, then make one image outside the cache; returns
    what was done, or raises with the reason."""
    started = time.perf_counter()
    if await asyncio.to_thread(engine.wait_settled) == EngineState.FAILED:
        raise ModelUnavailable(engine.error)
    loaded = time.perf_counter() - started
    identity = await service.model_identity()
    width, height = usable_sizes(sizes, identity)[0]
    probe = GenerationRequest(prompt="prewarm check", width=width, height=height, seed=0)
    result = await service.generate(probe, no_cache=True)
    return (
        f"{identity.model_id} on {identity.device} ({identity.dtype}): loaded and warmed in "
        f"{loaded:.1f} s; one {width}x{height} image ({len(result.entry.data)} bytes) in "
        f"{result.duration:.2f} s"
    )
