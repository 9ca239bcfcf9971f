"""Composition root and command line: settings -> engine + cache -> service -> HTTP API + Gradio UI.

Run `python app.py --help` for the settings; each flag is also an environment
variable `ZIMAGE_<NAME>` (flags win).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20
STATIC = Path(__file__).resolve().parent / "static"


class Settings(BaseSettings):
    """Every setting of the service: one table, read once, here."""

    model_config = SettingsConfigDict(
        env_prefix="ZIMAGE_",
        cli_prog_name="app.py",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 serves other machines too.")
    port: int = Field(7860, ge=1, le=65535, description="TCP port for the UI and the API.")
    model: str = Field(
        "auto",
        description="auto (the real model on CUDA, else the tiny demo model), tiny, a local "
        "diffusers directory, or a Hugging Face hub id.",
    )
    cache_dir: Path = Field(
        Path("~/.cache/z-image-turbo"),
        description="Disk cache (images/) and built models (models/); shared safely by several processes.",
    )
    memory_cache_mb: float = Field(
        512, ge=0, description="Size of the in-memory image cache, in MiB; 0 disables it."
    )
    max_queue: int = Field(
        64, ge=1, description="Generations allowed to wait; past this the API answers 503."
    )
    prompt_normalization: Literal["basic", "none", "aggressive"] = Field(
        "basic",
        description="Prompt canonicalisation before hashing and generating: basic (NFC, trim, collapse "
        "whitespace), none, or aggressive (also NFKC and lower case).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging level.")

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from pipeline.loading import check_model_spec

        check_model_spec(v)
        return v


def load_settings(argv: list[str]) -> Settings:
    """Parse flags and environment; exit with status 2 naming the setting on a bad value."""
    try:
        settings = Settings(_cli_parse_args=argv)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            flag, env = "--" + name.replace("_", "-"), "ZIMAGE_" + name.upper()
            msg = str(error["msg"]).removeprefix("Value error, ")
            print(f"app.py: invalid setting {flag} ({env}): {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        (settings.cache_dir / "images").mkdir(parents=True, exist_ok=True)
        probe = settings.cache_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        print(f"app.py: invalid setting --cache-dir (ZIMAGE_CACHE_DIR): {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def build_app(settings: Settings):  # -> tuple[fastapi.FastAPI, Engine]
    """Build the parts and hand them to each other; starts nothing."""
    import gradio as gr

    from cache import DiskTier, LayeredCache, MemoryTier
    from pipeline.engine import Engine
    from pipeline.loading import is_demo_spec
    from pipeline.service import GenerationService
    from web.api import create_api
    from web.ui import create_ui

    engine = Engine(settings.model, settings.cache_dir / "models", max_queue=settings.max_queue)
    cache = LayeredCache(
        [MemoryTier(int(settings.memory_cache_mb * MiB)), DiskTier(settings.cache_dir / "images")]
    )
    service = GenerationService(engine, cache, normalization=settings.prompt_normalization)
    api = create_api(service, engine)
    ui = create_ui(service, engine, demo_model=is_demo_spec(settings.model))
    app = gr.mount_gradio_app(
        api,
        ui,
        path="/",
        show_error=True,
        css_paths=[STATIC / "style.css"],
        favicon_path=str(STATIC / "favicon.svg"),
    )
    return app, engine


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    app, engine = build_app(settings)
    engine.start()
    logging.getLogger("app").info("serving on http://%s:%d", settings.host, settings.port)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
