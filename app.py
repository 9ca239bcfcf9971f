"""Composition root and command line: settings -> engine + cache -> service -> HTTP API + Gradio UI.

Run `python app.py --help` for the settings; each flag is also an environment
variable `ZIMAGE_<NAME>` (flags win).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from typing_extensions import TypeAliasType

from cache.units import parse_duration, parse_size

MiB = 1 << 20
# Named aliases: `--help` shows their names (SIZE, DURATION) where the values are
# typed, not the int/float they become.
Size = TypeAliasType("SIZE", Annotated[int, BeforeValidator(parse_size)])
Duration = TypeAliasType("DURATION", Annotated[float, BeforeValidator(parse_duration)])
STATIC = Path(__file__).resolve().parent / "static"
ORIGIN = re.compile(r"https?://(\[[0-9a-fA-F:.]+\]|[^/\s:,\[\]]+)(:\d{1,5})?")


class Settings(BaseSettings):
    """Every setting of the service: one table, read once, here."""

    model_config = SettingsConfigDict(
        env_prefix="ZIMAGE_",
        cli_prog_name="app.py",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,  # `--redis-url str`, not `{str,null}`
        validate_default=True,
    )

    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 serves other machines too.")
    port: int = Field(7860, ge=1, le=65535, description="TCP port for the UI and the API.")
    model: str = Field(
        "auto",
        description="auto (the real model on CUDA, else the tiny demo model; refused where an NVIDIA driver "
        "is installed but torch cannot use CUDA), tiny, a local diffusers directory, or a Hugging Face hub id.",
    )
    # How the model sits on a CUDA device (pipeline/placement.py).
    offload: Literal["auto", "none", "text-encoder", "model", "sequential"] = Field(
        "auto",
        description="Where the model's parts live on a CUDA GPU: none (all on the GPU), text-encoder (the text "
        "encoder on the CPU), model or sequential (accelerate's offload, slower); auto picks the first that "
        "fits the free GPU memory. Ignored on the CPU.",
    )
    quantize: Literal["none", "fp8"] = Field(
        "none",
        description="fp8: the transformer in torchao float8 (compute capability 8.9+, e.g. H100, L40S, RTX 4090; "
        "needs the fp8 extra); halves its memory. Part of the cache key. Refused on other devices.",
    )
    cache_dir: Path = Field(
        Path("~/.cache/z-image-turbo"),
        description="Disk cache (images/) and built models (models/); shared safely by several processes.",
    )
    memory_cache_mb: float = Field(
        512, ge=0, description="Size of the in-memory image cache, in MiB; 0 disables it."
    )
    disk_cache_size: Size = Field(
        "20GiB", description="Disk cache size cap (e.g. 20GiB, 500MB); least recently used entries go first."
    )
    disk_cache_max_age: Duration = Field(
        "7d", description="Disk entries unused for this long are removed (e.g. 7d, 12h, 30m)."
    )
    redis_url: str | None = Field(
        None,
        description="Shared Redis tier and cross-replica single flight: redis://host:6379/0, "
        "redis+sentinel://host:26379[,host:26379...]/MASTER[/db] (Sentinel failover) or "
        "redis+cluster://host:6379[,host:6379...] (Redis Cluster); also read from REDIS_URL. Off when unset.",
    )
    redis_ttl: Duration = Field("7d", description="How long an image lives in Redis (e.g. 7d, 24h).")
    cache_secret: str | None = Field(
        None,
        description="Secret (16+ characters) that signs every disk and Redis entry (HMAC-SHA256): entries "
        "written without it are rejected, so a shared Redis cannot be forged into. Every process sharing "
        "a cache needs the same one; prefer the environment variable.",
    )
    embedding_cache_mb: float = Field(
        256,
        ge=0,
        description="Size of the prompt-embedding cache (text-encoder outputs), in MiB; 0 disables it.",
    )
    no_cache_patterns: Path | None = Field(
        None,
        description="File of regular expressions, one a line: matching prompts are generated but never "
        "stored, and never logged.",
    )
    api_keys: Path | None = Field(
        None,
        description="File of `token namespace` lines: API routes then need `Authorization: Bearer <token>`, "
        "the token decides the namespace, and the UI asks for a login (namespace + token).",
    )
    admin_token: str | None = Field(
        None,
        description="Bearer token for admin routes (DELETE /api/cache); admin routes are off when unset.",
    )
    cors_origins: str = Field(
        "",
        description="Web origins allowed to call the API from a browser script, comma-separated "
        "(e.g. https://chat.example.com,http://localhost:3000), or * for any; empty (the default) "
        "allows no cross-origin calls, to any route, the UI's included.",
    )
    max_queue: int = Field(
        64, ge=1, description="Generations allowed to wait; past this the API answers 503."
    )
    warmup_sizes: str = Field(
        "1024x1024",
        description="Sizes warmed up (one short generation each) before /ready turns 200, "
        "comma-separated WIDTHxHEIGHT; list the sizes your users ask for.",
    )
    header_timeout: Duration = Field(
        "10s",
        description="A connection that has not sent a whole request head (request line and headers) "
        "this long after connecting, or after starting its next request, is closed.",
    )
    shutdown_timeout: Duration = Field(
        "60s",
        description="On SIGTERM, how long the generation in flight may take to finish before it is "
        "abandoned (nothing half-written is left either way); keep it below Supervisor's stopwaitsecs.",
    )
    prompt_normalization: Literal["basic", "none", "aggressive"] = Field(
        "basic",
        description="Prompt canonicalisation before hashing and generating: basic (NFC, trim, collapse "
        "whitespace), none, or aggressive (also NFKC and lower case).",
    )
    # CUDA speed levers (pipeline/compile.py, pipeline/attention.py).
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the transformer's repeated blocks: auto (on with CUDA, off on the CPU), "
        "on, off. The warm-up compiles every shape before /ready; the compiled kernels are kept under "
        "--cache-dir/compile, so a restart warms up faster.",
    )
    attention_backend: str = Field(
        "auto",
        description="Attention kernel, through diffusers' dispatcher: auto (FlashAttention-3 on Hopper when "
        "installed, then flash-attn, cuDNN, PyTorch native) or a diffusers backend name (native, flash, "
        "_flash_3, _native_cudnn, ...). Calls that need a mask use native when the kernel takes none.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging level.")
    log_prompts: bool = Field(
        False,
        description="Write each generation's prompt to the log (INFO); off by default, as prompts are "
        "user data. Prompts matching --no-cache-patterns are never logged.",
    )

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

    @field_validator("attention_backend")
    @classmethod
    def _attention_backend(cls, v: str) -> str:
        from pipeline.attention import check_backend_name

        return check_backend_name(v)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v:
            from cache.redis_url import parse_redis_url

            parse_redis_url(v)
        return v or None

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: Path | None) -> Path | None:
        if v is not None:
            from web.auth import read_api_keys

            read_api_keys(v)
        return v

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, v: str | None) -> str | None:
        from web.auth import MIN_TOKEN_CHARS

        if v is not None and len(v) < MIN_TOKEN_CHARS:
            raise ValueError(f"use at least {MIN_TOKEN_CHARS} characters")
        return v or None

    @field_validator("cache_secret")
    @classmethod
    def _cache_secret(cls, v: str | None) -> str | None:
        from web.auth import MIN_TOKEN_CHARS

        if v is not None and len(v) < MIN_TOKEN_CHARS:
            raise ValueError(f"use at least {MIN_TOKEN_CHARS} characters")
        return v or None

    @field_validator("header_timeout")
    @classmethod
    def _header_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be more than 0 (e.g. 10s)")
        return v

    @field_validator("warmup_sizes")
    @classmethod
    def _warmup_sizes(cls, v: str) -> str:
        from prewarm import parse_sizes

        return ",".join(f"{w}x{h}" for w, h in parse_sizes(v))

    @property
    def warmup_size_list(self) -> list[tuple[int, int]]:
        from prewarm import parse_sizes

        return parse_sizes(self.warmup_sizes)

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, v: str) -> str:
        origins = [o.strip() for o in v.split(",") if o.strip()]
        for origin in origins:
            if origin != "*" and not ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port] with no path, "
                    "e.g. https://chat.example.com, or *"
                )
        return ",".join(origins)

    @property
    def cors_origin_list(self) -> list[str]:
        return self.cors_origins.split(",") if self.cors_origins else []

    @field_validator("no_cache_patterns")
    @classmethod
    def _patterns(cls, v: Path | None) -> Path | None:
        if v is not None:
            read_patterns(v)
        return v


S = TypeVar("S", bound=Settings)


def read_patterns(path: Path) -> list[re.Pattern[str]]:
    """Compile a do-not-cache file: one regular expression a line; blank lines and
    lines starting with # are skipped. Raises ValueError naming the bad line."""
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    patterns = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                patterns.append(re.compile(line.strip(), re.IGNORECASE))
            except re.error as exc:
                raise ValueError(f"{path} line {number}: {exc}") from None
    return patterns


def load_settings(argv: list[str], cls: type[S] = Settings) -> S:  # type: ignore[assignment]
    """Parse flags and environment; exit with status 2 naming the setting on a bad value."""
    prog = cls.model_config.get("cli_prog_name", "app.py")
    env: dict[str, Any] = {}
    if "ZIMAGE_REDIS_URL" not in os.environ and os.environ.get("REDIS_URL"):
        env["redis_url"] = os.environ["REDIS_URL"]  # the conventional name, as a fallback
    try:
        settings = cls(_cli_parse_args=argv, **env)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            flag, env = "--" + name.replace("_", "-"), "ZIMAGE_" + name.upper()
            msg = str(error["msg"]).removeprefix("Value error, ")
            print(f"{prog}: invalid setting {flag} ({env}): {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        (settings.cache_dir / "images").mkdir(parents=True, exist_ok=True)
        probe = settings.cache_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        print(f"{prog}: invalid setting --cache-dir (ZIMAGE_CACHE_DIR): {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass
class ServiceParts:
    """The engine, the cache and the generation service over them (app.py and prewarm.py)."""

    engine: Any  # pipeline.engine.Engine
    disk: Any  # cache.DiskTier
    service: Any  # pipeline.service.GenerationService


@dataclass
class Runtime:
    """The built server: the ASGI app and the parts that run beside it."""

    app: Any  # fastapi.FastAPI with the Gradio UI mounted
    engine: Any  # pipeline.engine.Engine
    pruner: Any  # cache.maintenance.Pruner
    ui_dir: Path  # this process's own Gradio temp directory, removed on close

    def start(self) -> None:
        self.engine.start()
        self.pruner.start()

    def close(self, timeout_s: float = 0.0) -> bool:
        """Stop the pruner and the engine; True unless a generation is still running
        after `timeout_s` (then the caller abandons it)."""
        self.pruner.stop()
        shutil.rmtree(self.ui_dir, ignore_errors=True)
        return self.engine.close(timeout_s)


def build_service(settings: Settings, on_fatal: Any = None) -> ServiceParts:
    """Engine (warming up with prewarm.warm_up), tiers and service; starts nothing."""
    from functools import partial

    from cache import DiskTier, LayeredCache, MemoryTier
    from pipeline.engine import Engine
    from pipeline.loading import ModelOptions
    from pipeline.service import GenerationService
    from prewarm import warm_up

    engine = Engine(
        settings.model,
        settings.cache_dir / "models",
        max_queue=settings.max_queue,
        embedding_cache_bytes=int(settings.embedding_cache_mb * MiB),
        warmup=partial(warm_up, sizes=settings.warmup_size_list),
        on_fatal=on_fatal,
        options=ModelOptions(offload=settings.offload, quantize=settings.quantize),
        attention_backend=settings.attention_backend,
        compile=settings.compile,
        compile_cache_dir=settings.cache_dir / "compile",
    )
    secret = settings.cache_secret.encode() if settings.cache_secret else None
    disk = DiskTier(settings.cache_dir / "images", secret=secret)
    tiers: list[Any] = [MemoryTier(int(settings.memory_cache_mb * MiB)), disk]
    locks = None
    if settings.redis_url:
        from cache.redis_tier import RedisTier

        locks = RedisTier(settings.redis_url, ttl_s=settings.redis_ttl, secret=secret)
        tiers.append(locks)
    service = GenerationService(
        engine,
        LayeredCache(tiers),
        locks=locks,
        normalization=settings.prompt_normalization,
        no_store_patterns=read_patterns(settings.no_cache_patterns) if settings.no_cache_patterns else (),
        log_prompts=settings.log_prompts,
    )
    return ServiceParts(engine=engine, disk=disk, service=service)


def build_app(settings: Settings, on_fatal: Any = None) -> Runtime:
    """Build the parts and hand them to each other; starts nothing."""
    import gradio as gr

    from cache.maintenance import Pruner
    from pipeline.loading import is_demo_spec
    from web.api import create_api
    from web.auth import Access, read_api_keys
    from web.ui import create_ui, page_head
    from web.ui_images import UiImageRoute, UiImages, gradio_user
    from web.ui_text import I18N

    parts = build_service(settings, on_fatal)
    engine, service, disk = parts.engine, parts.service, parts.disk
    access = Access(
        api_keys=read_api_keys(settings.api_keys) if settings.api_keys else {},
        admin_token=settings.admin_token,
    )
    # Gradio serves its temp directory to every user: each process gets a private
    # one (mode 0700, under GRADIO_TEMP_DIR if set), so no two servers share one.
    # Gradio reads the variable as its Blocks are built, just below.
    ui_dir = Path(tempfile.mkdtemp(prefix="zimage-ui-", dir=os.environ.get("GRADIO_TEMP_DIR"))).resolve()
    os.environ["GRADIO_TEMP_DIR"] = str(ui_dir)
    images = UiImages(service, ui_dir / "results")
    api = create_api(
        service, engine, access=access, info=describe(settings), cors_origins=settings.cors_origin_list
    )
    ui = create_ui(service, engine, images, demo_model=is_demo_spec(settings.model))
    app = gr.mount_gradio_app(
        api,
        ui,
        path="/",
        show_error=True,
        css_paths=[STATIC / "style.css"],
        head=page_head(),
        favicon_path=str(STATIC / "favicon.svg"),
        i18n=I18N,
        auth=access.ui_login if access.api_keys else None,
        auth_message="Log in with your namespace as user name and its API token as password.",
    )
    # Without API keys every UI user is in the default namespace; with them, the
    # Gradio login session says whose the UI's images are.
    app.add_middleware(
        UiImageRoute,
        images=images,
        namespace_of=gradio_user(app) if access.api_keys else (lambda request: "public"),
    )
    pruner = Pruner(disk, max_age_s=settings.disk_cache_max_age, max_bytes=settings.disk_cache_size)
    return Runtime(app=app, engine=engine, pruner=pruner, ui_dir=ui_dir)


def describe(settings: Settings) -> dict[str, Any]:
    """What `/api/info` says about this build and its configuration (no secrets)."""
    from importlib.metadata import PackageNotFoundError, version

    from cache.redis_url import parse_redis_url

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    packages = ("z-image-turbo-service", "torch", "diffusers", "transformers", "gradio", "fastapi", "redis")
    return {
        "versions": {"python": sys.version.split()[0], **{name: ver(name) for name in packages}},
        "cache": {
            "memory_mb": settings.memory_cache_mb,
            "disk": {
                "dir": str(settings.cache_dir / "images"),
                "max_bytes": settings.disk_cache_size,
                "max_age_s": settings.disk_cache_max_age,
            },
            "redis": {
                "enabled": bool(settings.redis_url),
                "kind": parse_redis_url(settings.redis_url).kind if settings.redis_url else None,
                "ttl_s": settings.redis_ttl,
            },
            "signed": bool(settings.cache_secret),
            "embedding_cache_mb": settings.embedding_cache_mb,
            "prompt_normalization": settings.prompt_normalization,
            "no_cache_patterns": bool(settings.no_cache_patterns),
        },
        "speed": {"compile": settings.compile, "attention_backend": settings.attention_backend},
    }


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then stop gracefully. Exit status 0, or 1 after an
    unrecoverable device error (so that Supervisor restarts a fresh process)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    setup_logging(settings.log_level)
    import uvicorn

    from web.access_log import RedactPrompts
    from web.http_protocol import with_header_timeout

    log = logging.getLogger("app")
    logging.getLogger("uvicorn.access").addFilter(RedactPrompts())
    runtime = build_app(settings, on_fatal=lambda reason: os.kill(os.getpid(), signal.SIGTERM))
    engine = runtime.engine
    stopping_since: list[float] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # First refuse new generations and drop the queued ones (their callers get
            # 503); uvicorn then stops listening and waits for open requests, the one
            # generating included, up to the graceful-shutdown timeout.
            if not stopping_since:
                stopping_since.append(time.monotonic())
                log.info("signal %d: finishing the generation in flight, taking no new ones", sig)
                engine.close(0)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Like uvicorn's, minus re-raising the signal once stopped (which would end
            # the process killed by SIGTERM): a graceful stop exits with our status.
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        runtime.app,
        host=settings.host,
        port=settings.port,
        http=with_header_timeout(settings.header_timeout),
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )
    runtime.start()
    log.info("serving on http://%s:%d", settings.host, settings.port)
    try:
        Server(config).run()
    finally:
        spent = time.monotonic() - stopping_since[0] if stopping_since else 0.0
        idle = runtime.close(max(0.0, settings.shutdown_timeout - spent))
        status = 1 if engine.fatal else 0
        if not idle:
            # Only the model's thread is left; it writes nothing, and every store
            # has finished with the event loop, so ending here loses nothing stored.
            log.warning("abandoning the generation in flight after %.0f s", settings.shutdown_timeout)
            logging.shutdown()
            os._exit(status)
    log.info("stopped%s", " after an unrecoverable device error" if engine.fatal else "")
    return status


if __name__ == "__main__":
    sys.exit(main())
