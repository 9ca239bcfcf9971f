"""The composition root: settings -> engine + cache tiers -> service -> HTTP API + UI.

Builds the parts and hands them to each other (the service is given its engine
and cache, as text-generation-inference's is); starts nothing. `Parts.close` and
`Runtime.close` close everything that was built.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cache import DEFAULT_NAMESPACE, DiskTier, LayeredCache, MemoryTier
from cache.keyring import Keyring
from cache.layered import Tier
from cache.maintenance import Pruner
from cache.redis_tier import RedisTier
from cache.redis_url import parse_redis_url
from pipeline import warmup
from pipeline.encoding import STORED_FORMAT
from pipeline.engine import Engine
from pipeline.line_files import read_patterns
from pipeline.loading import ModelOptions
from pipeline.service import GenerationService
from pipeline.suggestions import Suggestions
from runtime.settings import Settings
from similarity import load_embedder
from similarity.near_repeats import NearRepeats
from similarity.shared import SharedPrompts
from similarity.stored import disk_prompts

MiB = 1 << 20
STATIC = Path(__file__).resolve().parent.parent / "static"
OnFatal = Callable[[str], None]


@dataclass
class Parts:
    """The engine, the cache and the generation service over them (app.py and prewarm.py)."""

    engine: Engine
    cache: LayeredCache
    disk: DiskTier
    service: GenerationService

    def close(self, timeout_s: float = 0.0) -> bool:
        """Stop the engine (waiting up to `timeout_s` for the generation in flight and its
        encoding), then close the cache (its promotion thread, the Redis pools and the
        Sentinel watcher). True unless a generation is still running (the caller may
        abandon it: a generation writes nothing; storing is the service's, on the loop)."""
        idle = self.engine.close(timeout_s)
        self.cache.close()
        if self.service.suggestions is not None:
            self.service.suggestions.near.close()
        return idle


@dataclass
class Runtime:
    """The built server: the ASGI app and the parts that run beside it."""

    app: Any  # fastapi.FastAPI with the Gradio UI mounted
    parts: Parts
    pruner: Pruner
    ui_dir: Path  # this process's own Gradio temp directory, removed on close

    @property
    def engine(self) -> Engine:
        return self.parts.engine

    def start(self) -> None:
        self.parts.engine.start()
        self.pruner.start()

    def close(self, timeout_s: float = 0.0) -> bool:
        """Stop the pruner, the engine and the cache, and remove the UI's temp directory;
        True unless a generation is still running after `timeout_s` (see Parts.close)."""
        self.pruner.stop()
        shutil.rmtree(self.ui_dir, ignore_errors=True)
        return self.parts.close(timeout_s)


def build_parts(settings: Settings, on_fatal: OnFatal | None = None) -> Parts:
    """Engine (warming up with pipeline.warmup), tiers and service; starts nothing."""
    engine = Engine(
        settings.model,
        settings.cache_dir / "models",
        max_queue=settings.max_queue,
        max_batch=settings.engine_batch,
        embedding_cache_bytes=int(settings.embedding_cache_mb * MiB),
        # Looked up now, by module, so a test harness (tests/faults.py) can wrap it.
        warmup=partial(warmup.warm_up, sizes=settings.warmup_size_list),
        on_fatal=on_fatal,
        options=ModelOptions(offload=settings.offload, quantize=settings.quantize),
        attention_backend=settings.attention_backend,
        compile=settings.compile,
        compile_cache_dir=settings.cache_dir / "compile",
        lora_dir=settings.lora_dir,
        max_adapters=settings.lora_cache_count,
        max_adapter_bytes=settings.lora_cache_size,
        controlnet=settings.controlnet,
    )
    keyring = Keyring.of(settings.cache_secrets)
    disk = DiskTier(settings.images_dir, keyring=keyring)
    tiers: list[Tier] = [MemoryTier(int(settings.memory_cache_mb * MiB)), disk]
    locks = None
    if settings.redis_url:
        locks = RedisTier(settings.redis_url, ttl_s=settings.redis_ttl, keyring=keyring)
        tiers.append(locks)
    cache = LayeredCache(tiers)
    suggestions = None
    if settings.similar_prompts:
        embedder = load_embedder()
        shared = (
            SharedPrompts(settings.redis_url, embedder.name, embedder.dim) if settings.redis_url else None
        )
        near = NearRepeats(
            embedder,
            settings.cache_dir / "similar",
            stored_prompts=disk_prompts(disk, STORED_FORMAT),
            shared=shared,
        )
        suggestions = Suggestions(near, min_score=settings.similar_min)
    service = GenerationService(
        engine,
        cache,
        locks=locks,
        normalization=settings.prompt_normalization,
        no_store_patterns=read_patterns(settings.no_cache_patterns) if settings.no_cache_patterns else (),
        log_prompts=settings.log_prompts,
        suggestions=suggestions,
    )
    return Parts(engine=engine, cache=cache, disk=disk, service=service)


def build_app(settings: Settings, on_fatal: OnFatal | None = None) -> Runtime:
    """Build the parts and hand them to each other; starts nothing."""
    import gradio as gr
    from starlette.middleware import Middleware

    from pipeline.loading import is_demo_spec
    from web.api import create_api
    from web.auth import Access, read_api_keys
    from web.body_limit import BodyLimit
    from web.gradio_guard import GradioGuard
    from web.ui import create_ui, page_head
    from web.ui_images import UiImageRoute, UiImages, gradio_user
    from web.ui_text import I18N

    parts = build_parts(settings, on_fatal)
    engine, service = parts.engine, parts.service
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
        service,
        engine,
        access=access,
        info=describe(settings),
        cors_origins=settings.cors_origin_list,
        body_timeout_s=settings.body_timeout,
        public_url=settings.public_url,
    )
    ui = create_ui(service, engine, images, demo_model=is_demo_spec(settings.model))
    app = gr.mount_gradio_app(
        api,
        ui,
        path="/",
        # A full URL: Gradio's root (the UI's file URLs, its clients' root) is then
        # never made from the request's Host or X-Forwarded-Host, which clients set.
        root_path=settings.public_url,
        show_error=True,
        css_paths=[STATIC / "style.css"],
        head=page_head(),
        favicon_path=str(STATIC / "favicon.svg"),
        i18n=I18N,
        auth=access.ui_login if access.api_keys else None,
        auth_message="Log in with your namespace as user name and its API token as password.",
    )
    # Just inside the body limit, which has read and capped the body by then:
    # add_middleware would put the guard outermost, reading an uncapped body first.
    # Without API keys every UI user is in the default namespace; with them, the
    # Gradio login session says whose the UI's images and sessions are.
    ui_namespace = gradio_user(app) if access.api_keys else (lambda request: DEFAULT_NAMESPACE)
    # The UI's image tab posts to /api/edit from the page, in its login session's namespace.
    app.state.ui_user = gradio_user(app) if access.api_keys else None
    limit = next(i for i, m in enumerate(app.user_middleware) if m.cls is BodyLimit)
    app.user_middleware.insert(limit + 1, Middleware(GradioGuard, blocks=ui, namespace_of=ui_namespace))
    app.add_middleware(UiImageRoute, images=images, namespace_of=ui_namespace)
    pruner = Pruner(parts.disk, max_age_s=settings.disk_cache_max_age, max_bytes=settings.disk_cache_size)
    return Runtime(app=app, parts=parts, pruner=pruner, ui_dir=ui_dir)


def describe(settings: Settings) -> dict[str, Any]:
    """What `/api/info` says about this build and its configuration (no secrets)."""
    from importlib.metadata import PackageNotFoundError, version

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
                "dir": str(settings.images_dir),
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
