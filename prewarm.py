"""Warm-up: load the model, run one short inference per size, optionally fill the cache.

One implementation, used two ways:

- inside the serving process: app.py hands `warm_up` to the engine, which runs it
  after loading and before `/ready` turns 200 (cache hits are served meanwhile;
  misses wait in the engine's bounded queue). Warming must happen in the process
  that serves: CUDA kernels, autotuning and compiled graphs live in its memory,
  and a separate process frees them when it exits.
- standalone, with every setting of app.py:
    python prewarm.py --check          load, warm, make one image; exit 0, or 1 with the reason
    python prewarm.py --prompts FILE   fill the cache (disk, and Redis when set) from a prompt
                                       list; exit 1 if any line failed
  A prompt file has one prompt a line, optionally `prompt|seed` or `prompt|seed|WxH`
  (an empty seed keeps the default); blank lines and lines starting with # are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.request import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, CanonicalRequest

if TYPE_CHECKING:
    from pipeline.engine import Engine
    from pipeline.loading import ModelIdentity
    from pipeline.request import GenerationRequest
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


def warm_up(engine: Engine, identity: ModelIdentity, sizes: list[tuple[int, int]]) -> None:
    """Run one short generation per size on the engine thread, so that kernels,
    autotuning and compile caches are hot before the first user waits on them.
    Sizes outside the model's range are skipped with a warning; if none is left
    the smallest size is warmed, so that ready always means an image was made.
    With a compiled transformer, `compile_variants` of the first size follow, so
    that no request compiles after /ready."""
    usable = [(w, h) for w, h in sizes if all(identity.min_size <= v <= identity.max_size for v in (w, h))]
    for w, h in sorted(set(sizes) - set(usable)):
        log.warning(
            "warm-up: skipping %dx%d, outside this model's %d..%d", w, h, identity.min_size, identity.max_size
        )
    usable = usable or [(identity.min_size, identity.min_size)]
    for width, height in usable:
        started = time.perf_counter()
        engine.run_now([CanonicalRequest("warm-up", "", 0, width, height, WARMUP_STEPS, 0.0, "png")])
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
    base = CanonicalRequest("warm-up", "", 0, width, height, WARMUP_STEPS, 0.0, "png")
    return [
        ("batch of 2", [base, replace(base, seed=1)]),
        ("guidance with a mask", [replace(base, negative_prompt=_WARMUP_NEGATIVE, guidance_scale=1.5)]),
    ]


@dataclass(frozen=True)
class PromptLine:
    number: int
    request: GenerationRequest | None  # None when the line is invalid
    error: str = ""


def read_prompt_file(path: Path) -> list[PromptLine]:
    """Parse a prompt file; an invalid line is kept with its error, so one typo
    does not stop the rest of the fill."""
    from pydantic import ValidationError

    from pipeline.request import GenerationRequest

    lines = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        prompt, *rest = raw.split("|")
        fields: dict[str, object] = {"prompt": prompt.strip()}
        try:
            if len(rest) > 2:
                raise ValueError("too many | fields; write prompt, prompt|seed or prompt|seed|WxH")
            if rest and rest[0].strip():
                fields["seed"] = int(rest[0])
            if len(rest) == 2 and rest[1].strip():
                sizes = parse_sizes(rest[1])
                if len(sizes) > 1:
                    raise ValueError(f"one size a line, got {rest[1].strip()!r}")
                fields["width"], fields["height"] = sizes[0]
            lines.append(PromptLine(number, GenerationRequest(**fields)))
        except ValidationError as exc:
            error = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            lines.append(PromptLine(number, None, error))
        except ValueError as exc:
            lines.append(PromptLine(number, None, str(exc)))
    return lines


@dataclass
class FillReport:
    hits: Counter[str] = field(default_factory=Counter)  # by tier
    generated: int = 0
    failed: list[str] = field(default_factory=list)  # "line N: reason"
    seconds: float = 0.0

    def summary(self) -> str:
        tiers = ", ".join(f"{tier} {n}" for tier, n in sorted(self.hits.items()))
        hits = sum(self.hits.values())
        total = hits + self.generated + len(self.failed)
        return (
            f"{total} prompt{'' if total == 1 else 's'} in {self.seconds:.1f} s: "
            f"{hits} hits{f' ({tiers})' if tiers else ''}, {self.generated} generated, "
            f"{len(self.failed)} failed"
        )


async def fill_cache(
    service: GenerationService, lines: list[PromptLine], namespace: str, *, show_progress: bool = True
) -> FillReport:
    """Look up or generate every line through the service (the same path as a user's
    request), one at a time, with a progress bar."""
    from tqdm import tqdm

    report, started = FillReport(), time.perf_counter()
    with tqdm(total=len(lines), unit="prompt", disable=not show_progress, file=sys.stderr) as bar:
        for line in lines:
            if line.request is None:
                report.failed.append(f"line {line.number}: {line.error}")
            else:
                try:
                    result = await service.generate(line.request, namespace=namespace)
                except Exception as exc:
                    report.failed.append(f"line {line.number}: {exc}")
                else:
                    if result.cache in ("miss", "bypass"):
                        report.generated += 1
                    else:
                        report.hits[result.cache] += 1
            bar.update()
            bar.set_postfix(
                hits=sum(report.hits.values()), generated=report.generated, failed=len(report.failed)
            )
    report.seconds = time.perf_counter() - started
    return report


async def check(service: GenerationService, engine: Engine, sizes: list[tuple[int, int]]) -> str:
    """Wait for loading and warm-up, then make one image outside the cache; returns
    what was done, or raises with the reason."""
    from pipeline.engine import FAILED, READY, ModelUnavailable
    from pipeline.request import GenerationRequest

    started = time.perf_counter()
    while engine.state not in (READY, FAILED):
        await asyncio.sleep(0.1)
    if engine.state == FAILED:
        raise ModelUnavailable(engine.error)
    loaded = time.perf_counter() - started
    identity = await service.model_identity()
    width, height = next(
        ((w, h) for w, h in sizes if min(w, h) >= identity.min_size and max(w, h) <= identity.max_size),
        (identity.min_size, identity.min_size),
    )
    probe = GenerationRequest(prompt="prewarm check", width=width, height=height, seed=0)
    result = await service.generate(probe, no_cache=True)
    return (
        f"{identity.model_id} on {identity.device} ({identity.dtype}): loaded and warmed in "
        f"{loaded:.1f} s; one {width}x{height} image ({len(result.entry.data)} bytes) in "
        f"{result.duration:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    from pydantic import Field

    from app import Settings, build_service, load_settings, setup_logging

    class PrewarmSettings(Settings):
        """The service's settings, plus what to do."""

        model_config = Settings.model_config | {"cli_prog_name": "prewarm.py"}

        check: bool = Field(False, description="Load, warm and make one image; exit 0, or 1 with the reason.")
        prompts: Path | None = Field(
            None, description="Fill the cache from this file: one `prompt[|seed[|WxH]]` a line."
        )
        namespace: str = Field("public", description="Cache namespace the --prompts entries belong to.")
        progress: bool = Field(True, description="Draw a progress bar for --prompts.")

    settings = load_settings(sys.argv[1:] if argv is None else argv, PrewarmSettings)
    setup_logging(settings.log_level)
    if not settings.check and settings.prompts is None:
        print("prewarm.py: say what to do: --check, --prompts FILE, or both", file=sys.stderr)
        return 2
    lines = []
    if settings.prompts is not None:
        try:
            lines = read_prompt_file(settings.prompts.expanduser())
        except (OSError, UnicodeDecodeError) as exc:
            print(f"prewarm.py: cannot read --prompts {settings.prompts}: {exc}", file=sys.stderr)
            return 2

    async def run() -> int:
        parts = build_service(settings)
        parts.engine.start(load=settings.check)  # a fill of hits only needs no model
        status = 0
        try:
            if settings.check:
                try:
                    print(f"ok: {await check(parts.service, parts.engine, settings.warmup_size_list)}")
                except Exception as exc:
                    print(f"failed: {exc}")
                    return 1
            if lines:
                report = await fill_cache(
                    parts.service, lines, settings.namespace, show_progress=settings.progress
                )
                print(report.summary())
                for failure in report.failed:
                    print(f"  failed {failure}")
                status = 1 if report.failed else 0
        finally:
            parts.engine.close()
        return status

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
