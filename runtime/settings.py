"""Every setting of the service: one table (flag, `ZIMAGE_*` variable, default,
meaning), read once at start-up and handed to the parts as plain values.

One concept, one table: the descriptions are the README's (runtime/settings_table.py
writes the README's table from them, and tests/test_settings.py fails when the two
differ), which is why this module runs past 300 lines of mostly prose.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from typing_extensions import TypeAliasType

from cache.defaults import (
    DEFAULT_CACHE_DIR,
    DEFAULT_DISK_MAX_AGE,
    DEFAULT_DISK_MAX_SIZE,
    DEFAULT_REDIS_TTL,
    images_dir,
)
from cache.keyring import MIN_SECRET_BYTES, parse_secrets
from cache.redis_url import parse_redis_url
from cache.units import parse_duration, parse_size
from pipeline.attention import check_backend_name
from pipeline.batching import DEFAULT_MAX_BATCH
from pipeline.compile import CompileSetting
from pipeline.errors import validation_message
from pipeline.limits import DEFAULT_MAX_QUEUE, DEFAULT_NORMALIZATION, DEFAULT_SIZE, MAX_LORAS, Normalization
from pipeline.line_files import read_patterns
from pipeline.loading import Quantize, check_model_spec
from pipeline.lora_adapters import DEFAULT_MAX_ADAPTER_BYTES, DEFAULT_MAX_ADAPTERS
from pipeline.placement import Offload
from pipeline.warmup import parse_sizes
from web.auth import MIN_TOKEN_CHARS, read_api_keys

# Named aliases: `--help` shows their names (SIZE, DURATION) where the values are
# typed, not the int/float they become.
Size = TypeAliasType("SIZE", Annotated[int, BeforeValidator(parse_size)])
Duration = TypeAliasType("DURATION", Annotated[float, BeforeValidator(parse_duration)])
ORIGIN = re.compile(r"https?://(\[[0-9a-fA-F:.]+\]|[^/\s:,\[\]]+)(:\d{1,5})?")
PUBLIC_URL = re.compile(ORIGIN.pattern + r"(/[^\s?#]*)?")
CUDA_SECTION = "See [On a CUDA GPU](#on-a-cuda-gpu)."
CUDA_OPTIONS = "See [CUDA options](#cuda-options-compilation-attention-out-of-memory)."


def readme(see: str) -> dict[str, Any]:
    """A cross-reference the README's table adds after a setting's meaning (`--help` has none)."""
    return {"readme_see": see}


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

    host: str = Field("127.0.0.1", description="Interface to listen on; `0.0.0.0` serves other machines too.")
    port: int = Field(7860, ge=1, le=65535, description="TCP port for the UI and the API.")
    model: str = Field(
        "auto",
        description="`auto`: the real model when CUDA is present, else the tiny demo model; but on a "
        "machine with an NVIDIA driver whose torch cannot use CUDA (a CPU-only torch build, "
        "`CUDA_VISIBLE_DEVICES` hiding the GPU) the model fails with the reason on `/ready` and in the UI "
        "instead of serving noise. `tiny`: the demo model. A directory: a diffusers model on local disk. "
        "`owner/name`: a Hugging Face hub id, fetched into the HF cache (only the files the pipeline "
        "reads; `Tongyi-MAI/Z-Image-Turbo` under `auto`).",
    )
    offload: Offload = Field(
        "auto",
        description="Where the model's parts live on a CUDA GPU: `none` (all on the GPU), `stream-text-encoder` "
        "(the text encoder streamed through the GPU from pinned CPU memory), `text-encoder` "
        "(the text encoder on the CPU), `model` (every part streamed block by block from pinned CPU memory: "
        "diffusers' group offloading) or `sequential` (accelerate's, module by module; slowest); `auto` takes "
        "the first that fits the free GPU memory. Ignored on the CPU.",
        json_schema_extra=readme(CUDA_SECTION),
    )
    quantize: Quantize = Field(
        "none",
        description="`fp8`: the transformer blocks' attention and feed-forward layers in torchao float8 "
        "(row-wise scales), about half its memory; needs compute capability 8.9+ (H100, H200, L40S, "
        "RTX 4090, ...) and the `fp8` extra (`pip install -e '.[fp8]'`). Part of the cache key. Refused on "
        "older GPUs (`/ready` says why); emulated on the CPU (slow, in bfloat16: for tests).",
    )
    controlnet: str | None = Field(
        None,
        description="ControlNet weights for control-image requests: the Z-Image-Turbo Fun ControlNet Union "
        "`.safetensors` file, a diffusers directory, or `tiny` (a tiny one built locally, for the demo "
        "model). Unset: no ControlNet (a control image is a 422).",
    )
    cache_dir: Path = Field(
        DEFAULT_CACHE_DIR,
        description="The disk cache (`images/`) and locally built models (`models/`). Several processes "
        "may share it.",
    )
    memory_cache_mb: float = Field(
        512, ge=0, description="Size of the in-memory image cache in MiB (`0` disables it)."
    )
    disk_cache_size: Size = Field(
        DEFAULT_DISK_MAX_SIZE,
        description="Size cap of the disk cache (`500MB`, `20GiB`, or bytes); the least recently used "
        "entries go first.",
    )
    disk_cache_max_age: Duration = Field(
        DEFAULT_DISK_MAX_AGE,
        description="Disk entries unused for this long are removed (`30m`, `12h`, `7d`, `1d12h`, or seconds).",
    )
    redis_url: str | None = Field(
        None,
        description="A Redis shared by all replicas: the third cache tier and the cross-replica generation "
        "lock. `redis://host:6379/0`, `redis+sentinel://host1:26379,host2:26379/MASTER[/db]` (Sentinel "
        "failover) or `redis+cluster://host1:6379,host2:6379` (Redis Cluster). Also read from `REDIS_URL`. "
        "Off when unset.",
        json_schema_extra=readme("See [Scaling out](#scaling-out)."),
    )
    redis_ttl: Duration = Field(DEFAULT_REDIS_TTL, description="How long an image lives in Redis.")
    cache_secret: str | None = Field(
        None,
        description=f"Secrets of {MIN_SECRET_BYTES}+ random bytes, comma-separated, newest first, that sign "
        "every disk and Redis entry with HMAC-SHA256: writes sign with the first, reads accept any (to "
        "rotate, put the new one in front). Entries signed with another secret are neither served nor "
        "removed. Give every process that shares a cache directory or a Redis the same list, through the "
        "environment (a flag shows in `ps`).",
        json_schema_extra=readme("See [What is protected](#what-is-protected-and-what-is-not)."),
    )
    embedding_cache_mb: float = Field(
        256,
        ge=0,
        description="Size of the in-memory cache of text-encoder outputs in MiB (`0` disables it): a known "
        "prompt with a new seed or size skips the text encoder.",
    )
    similar_prompts: bool = Field(
        True,
        description="Near-repeats: on a miss, offer up to 4 stored images of the same namespace whose prompts "
        "are like the new one (`similar` in `/run` and `/api/generate`), and let a request ask for the nearest "
        "with `similar_threshold`. A multilingual sentence-embedding model on the CPU (about 150 MB, loaded on "
        "the first miss); the index is kept under `<cache-dir>/similar/`.",
        json_schema_extra=readme("See [Near-repeats](#near-repeats)."),
    )
    similar_min: float = Field(
        0.7,
        gt=0,
        le=1,
        description="The cosine similarity (0..1) a stored prompt needs to be offered as a near-repeat.",
    )
    no_cache_patterns: Path | None = Field(
        None,
        description="A file of regular expressions, one a line (`#` comments; case-insensitive). A request "
        "whose prompt or negative prompt matches is generated but never stored (the response says "
        "`bypass`).",
    )
    api_keys: Path | None = Field(
        None,
        description="A file of `token namespace` lines (`#` comments; tokens of 16+ characters). When set, "
        "the API routes need `Authorization: Bearer <token>`, the token decides the namespace, and the UI "
        "asks for a login: the namespace as user name, its token as password.",
    )
    admin_token: str | None = Field(
        None,
        description="Bearer token (16+ characters) for the admin route `DELETE /api/cache`; admin routes "
        "answer 403 when unset.",
    )
    cors_origins: str = Field(
        "",
        description="Web origins whose browser scripts may call the service, comma-separated "
        "(`https://chat.example.com,http://localhost:3000`), or `*`. Empty allows no cross-origin calls to "
        "any route, the UI's included.",
        json_schema_extra=readme("See [CORS](#cors)."),
    )
    public_url: str | None = Field(
        None,
        description="The URL clients reach the service at (`https://images.example.com`, a path allowed), "
        "behind a proxy or a load balancer: the absolute URLs the service makes (OpenAI's `url`, MCP's, the "
        "UI's root) start with it. Unset, they follow the request's `Host` header, which any client sets.",
        json_schema_extra=readme("See [Behind a proxy](#behind-a-proxy-the-public-url)."),
    )
    max_queue: int = Field(
        DEFAULT_MAX_QUEUE,
        ge=1,
        description="Generation jobs allowed to wait for the GPU (a batch is one job); past that the API "
        "answers 503 with `Retry-After`, and the UI says the server is busy and tries again by itself.",
        json_schema_extra=readme("See [The UI](#the-ui)."),
    )
    engine_batch: int | None = Field(
        None,
        ge=1,
        le=64,
        description=f"Most images one model call gathers from concurrent requests that miss the cache with "
        "the same size, steps and guidance (and captions of the same padded length): jobs queued when the "
        "GPU frees up, or sent within 20 ms of each other, run as one batch. On CUDA the memory plan may "
        f"allow fewer. `1` turns batching across requests off. Default: {DEFAULT_MAX_BATCH} on CUDA, 1 on "
        "the CPU (where batching does not pay).",
        json_schema_extra=readme(CUDA_OPTIONS),
    )
    lora_dir: Path | None = Field(
        None,
        description="A folder of LoRA `.safetensors` files (diffusers, Kohya and other trainers' formats "
        "that diffusers reads) that requests may name in `loras`, by file name without the suffix; "
        "files added later are seen at once. The demo model also has its demo LoRA, `tiny-demo`.",
        json_schema_extra=readme("See [LoRAs](#loras)."),
    )
    lora_cache_count: int = Field(
        DEFAULT_MAX_ADAPTERS,
        ge=MAX_LORAS,
        le=256,
        description="Most LoRA adapters kept loaded in the model; the least recently used is unloaded first.",
    )
    lora_cache_size: Size = Field(
        DEFAULT_MAX_ADAPTER_BYTES,
        description="Most bytes of LoRA files kept loaded in the model (`2GiB`, `500MB`, or bytes).",
    )
    warmup_sizes: str = Field(
        f"{DEFAULT_SIZE}x{DEFAULT_SIZE}",
        description="Sizes warmed up before `/ready` turns 200, comma-separated `WIDTHxHEIGHT` (e.g. "
        "`1024x1024,768x1344`): one short generation each, so the first user of each size does not pay for "
        "kernel selection and compilation. List the sizes your users ask for.",
    )
    header_timeout: Duration = Field(
        "10s",
        description="A connection that has not sent a whole request head (request line and headers) this "
        "long after connecting, or after the first bytes of its next request, is closed. Idle keep-alive "
        "connections are closed after 5 s.",
    )
    body_timeout: Duration = Field(
        "10s",
        description="A request whose whole body (at most 64 KB) has not arrived this long after its head "
        "gets 408 and its connection is closed: a declared body that never comes, one sent a byte at a time, "
        "or an `Expect: 100-continue` that never follows up. A larger body (an upload) must advance by 64 KB "
        "within each such time.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections served at once; a request arriving on one more gets 503 and its "
        "connection is closed. Each open connection costs memory whether or not it sends anything (those "
        "that send nothing are closed after `--header-timeout`). Behind nginx, keep it above nginx's "
        "upstream connections.",
    )
    shutdown_timeout: Duration = Field(
        "60s",
        description="On SIGTERM, how long the generation in flight may take to finish before it is "
        "abandoned. Keep it below Supervisor's `stopwaitsecs` (90).",
    )
    prompt_normalization: Normalization = Field(
        DEFAULT_NORMALIZATION,
        description="How prompts are canonicalised before hashing and before generating: `basic` (Unicode "
        "NFC, trim, collapse whitespace), `none`, or `aggressive` (also NFKC full-width to half-width and "
        "lower case; this changes what the model sees).",
    )
    compile: CompileSetting = Field(
        "auto",
        description="`torch.compile` the transformer's repeated blocks (regional compilation): `auto` (on "
        "with CUDA, off on the CPU), `on` or `off`. The warm-up compiles every shape before `/ready`; the "
        "compiled kernels are kept in `--cache-dir`'s `compile/`.",
        json_schema_extra=readme(CUDA_OPTIONS),
    )
    attention_backend: str = Field(
        "auto",
        description="The attention kernel, through diffusers' attention dispatcher: `auto` "
        "(on CUDA, times FlashAttention-3, cuDNN, `flash-attn` and PyTorch native on the model's real "
        "attention shape, keeps those whose output matches native, takes the fastest and logs the table) or a "
        "diffusers backend name (`native`, `flash`, `_flash_3`, `_native_cudnn`, `_native_flash`, ...). An "
        "unknown name stops the start naming the choices; a known one that cannot run on this machine fails "
        "the model with the reason.",
        json_schema_extra=readme(CUDA_OPTIONS),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="`debug`, `info`, `warning` or `error`. A few start-up warnings of torch and torchao that "
        "mean nothing here (torchao's prebuilt kernels for another Python or GPU, no Triton on a CPU, "
        "torchao's Enum pytree notice) show only at `debug`.",
    )
    log_prompts: bool = Field(
        False,
        description="Write each generation's prompt into its log line (INFO). Off by default: prompts are "
        "user data, and the log then says only the size, steps and time. Prompts matching "
        "`--no-cache-patterns` are never logged.",
    )

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        check_model_spec(v)
        return v

    @field_validator("attention_backend")
    @classmethod
    def _attention_backend(cls, v: str) -> str:
        return check_backend_name(v)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v:
            parse_redis_url(v)
        return v or None

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: Path | None) -> Path | None:
        if v is not None:
            read_api_keys(v)
        return v

    @field_validator("cache_secret")
    @classmethod
    def _cache_secret(cls, v: str | None) -> str | None:
        if v:
            parse_secrets(v)
        return v or None

    @property
    def cache_secrets(self) -> list[bytes]:
        """`--cache-secret` as bytes, newest first (none: entries are unsigned)."""
        return parse_secrets(self.cache_secret) if self.cache_secret else []

    @field_validator("admin_token")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None and len(v) < MIN_TOKEN_CHARS:
            raise ValueError(f"use at least {MIN_TOKEN_CHARS} characters")
        return v or None

    @field_validator("header_timeout", "body_timeout")
    @classmethod
    def _connection_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be more than 0 (e.g. 10s)")
        return v

    @field_validator("warmup_sizes")
    @classmethod
    def _warmup_sizes(cls, v: str) -> str:
        return ",".join(f"{w}x{h}" for w, h in parse_sizes(v))

    @property
    def warmup_size_list(self) -> list[tuple[int, int]]:
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

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not PUBLIC_URL.fullmatch(v):
            raise ValueError(
                "not a public URL; write scheme://host[:port][/path] with no query or fragment, "
                "e.g. https://images.example.com"
            )
        return v.rstrip("/")

    @property
    def cors_origin_list(self) -> list[str]:
        return self.cors_origins.split(",") if self.cors_origins else []

    @field_validator("no_cache_patterns")
    @classmethod
    def _patterns(cls, v: Path | None) -> Path | None:
        if v is not None:
            read_patterns(v)
        return v

    @property
    def images_dir(self) -> Path:
        return images_dir(self.cache_dir)


S = TypeVar("S", bound=Settings)


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
            print(
                f"{prog}: invalid setting {flag_and_variable(name)}: {validation_message(error)}",
                file=sys.stderr,
            )
        raise SystemExit(2) from None
    try:
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.cache_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        print(f"{prog}: invalid setting {flag_and_variable('cache_dir')}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def flag_of(name: str) -> str:
    """`--cache-dir` for the setting `cache_dir`."""
    return f"--{name.replace('_', '-')}"


def variable_of(name: str) -> str:
    """`ZIMAGE_CACHE_DIR` for the setting `cache_dir`."""
    return f"{Settings.model_config['env_prefix']}{name.upper()}"


def flag_and_variable(name: str) -> str:
    """`--cache-dir (ZIMAGE_CACHE_DIR)` for the setting `cache_dir`."""
    return f"{flag_of(name)} ({variable_of(name)})"


def setup_logging(level: str) -> None:
    """The log's level and format; third-party start-up warnings that mean nothing to
    the user lowered to DEBUG (runtime/quiet_logs.py)."""
    from runtime import quiet_logs

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_logs.install()
