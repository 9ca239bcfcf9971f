"""Filling the cache from a prompt list (`python prewarm.py --prompts FILE`).

A prompt file has one prompt a line, optionally `prompt|seed` or `prompt|seed|WxH`
(an empty seed keeps the default); blank lines and lines starting with # are
skipped (pipeline/line_files.py). Every line goes through the service, the same
path as a user's request.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from pipeline.errors import validation_message
from pipeline.line_files import read_lines
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from pipeline.warmup import parse_sizes


@dataclass(frozen=True)
class PromptLine:
    number: int
    request: GenerationRequest | None  # None when the line is invalid
    error: str = ""


def read_prompt_file(path: Path) -> list[PromptLine]:
    """Parse a prompt file; an invalid line is kept with its error, so one typo
    does not stop the rest of the fill."""
    lines = []
    for number, raw in read_lines(path):
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
            error = "; ".join(validation_message(e) for e in exc.errors())
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
                    if result.generated:
                        report.generated += 1
                    else:
                        report.hits[result.cache] += 1
            bar.update()
            bar.set_postfix(
                hits=sum(report.hits.values()), generated=report.generated, failed=len(report.failed)
            )
    report.seconds = time.perf_counter() - started
    return report
