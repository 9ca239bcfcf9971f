"""`python prewarm.py`: load and check the model, or fill the cache from a prompt list,
with every setting of app.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pydantic import Field

from cache import DEFAULT_NAMESPACE
from pipeline.prompt_file import fill_cache, read_prompt_file
from pipeline.warmup import check
from runtime.settings import Settings, load_settings, setup_logging
from runtime.wiring import build_parts


class PrewarmSettings(Settings):
    """The service's settings, plus what to do."""

    model_config = Settings.model_config | {"cli_prog_name": "prewarm.py"}

    check: bool = Field(False, description="Load, warm and make one image; exit 0, or 1 with the reason.")
    prompts: Path | None = Field(
        None, description="Fill the cache from this file: one `prompt[|seed[|WxH]]` a line."
    )
    namespace: str = Field(DEFAULT_NAMESPACE, description="Cache namespace the --prompts entries belong to.")
    progress: bool = Field(True, description="Draw a progress bar for --prompts.")


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when everything asked for worked; 1 when the check failed or a
    prompt line did; 2 for bad settings or an unreadable prompt file."""
    settings = load_settings(sys.argv[1:] if argv is None else argv, PrewarmSettings)
    setup_logging(settings.log_level)
    if not settings.check and settings.prompts is None:
        print("prewarm.py: say what to do: --check, --prompts FILE, or both", file=sys.stderr)
        return 2
    lines = []
    if settings.prompts is not None:
        try:
            lines = read_prompt_file(settings.prompts)
        except ValueError as exc:
            print(f"prewarm.py: --prompts: {exc}", file=sys.stderr)
            return 2

    async def run() -> int:
        parts = build_parts(settings)
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
            parts.close()
        return status

    return asyncio.run(run())
