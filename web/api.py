"""HTTP routes: health, readiness, generation, stored images, stats, metrics, info, admin."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from cache import Hit, is_namespace
from pipeline.engine import READY, Engine, GenerationFailed, ModelUnavailable, QueueFull
from pipeline.request import GenerationRequest, RequestInvalid
from pipeline.service import BYPASS_TIER, GenerationResult, GenerationService
from web.auth import Access
from web.metrics import Metrics

IMAGE_NAME = re.compile(r"([0-9a-f]{64})\.(png|jpeg|webp)")
IMMUTABLE = "public, max-age=31536000, immutable"
RETRY_AFTER_S = 5
MAX_API_BATCH = 8
# The largest valid request (two 2,000-character prompts of 4-byte characters,
# in JSON) is about 17 KB; anything much larger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
LIMITED_PATHS = ("/generate", "/api/")


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes` on the API's routes, judged by
    Content-Length and by counting what arrives (a chunked body has no length)."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._too_large(send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # raised where the route reads its body: a 413
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)

    @property
    def message(self) -> str:
        return f"request body over {self.max_bytes} bytes; a generation request is a few KB"

    async def _too_large(self, send: Any) -> None:
        body = JSONResponse({"detail": self.message}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


class RunQuery(GenerationRequest):
    """The query string of `GET /run`: the request fields plus `no_cache`."""

    no_cache: bool = Field(False, description="Neither read nor write the cache; always generate.")


class BatchRequest(GenerationRequest):
    """The body of `POST /api/generate`: the request fields plus a batch size."""

    batch_size: int = Field(
        1,
        ge=1,
        le=MAX_API_BATCH,
        description=f"Images to make, 1..{MAX_API_BATCH}; image i has seed `seed + i` (each drawn when seed is -1).",
    )
    no_cache: bool = Field(False, description="Neither read nor write the cache; always generate.")


async def caller_namespace(  # async: FastAPI would run a plain def on a worker thread
    request: Request,
    x_namespace: Annotated[
        str | None,
        Header(description="Cache namespace (default `public`); with API keys, the token's namespace."),
    ] = None,
) -> str:
    """The namespace a request acts in (and, with API keys, its authentication)."""
    if x_namespace is not None and not is_namespace(x_namespace):
        raise RequestInvalid("x-namespace", f"X-Namespace {x_namespace!r} must be 1-64 of a-z, 0-9, _ and -")
    return request.app.state.access.caller_namespace(request, x_namespace)


Namespace = Annotated[str, Depends(caller_namespace)]


def create_api(
    service: GenerationService,
    engine: Engine,
    *,
    access: Access | None = None,
    info: dict[str, Any] | None = None,
) -> FastAPI:
    access = access or Access()
    metrics = Metrics(service)
    app = FastAPI(
        title="Z-Image-Turbo",
        summary="Z-Image-Turbo text-to-image behind a layered result cache.",
        description="Every image route answers from the cache when it can (`X-Cache` says which tier) "
        "and generates otherwise. With API keys configured, send `Authorization: Bearer <token>`.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.access = access
    app.add_middleware(BodyLimit)
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness; always fast, whatever the model is doing."""
        identity = engine.identity
        return {"status": "ok", "model": engine.state, "device": identity.device if identity else None}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 once the model is loaded and has produced an image, else 503 with its state."""
        if engine.state == READY:
            return JSONResponse({"status": "ready"})
        body = {"status": engine.state}
        if engine.error:
            body["reason"] = engine.error
        return JSONResponse(body, status_code=503)

    @app.get("/run")
    async def run(params: Annotated[RunQuery, Query()], namespace: Namespace) -> JSONResponse:
        """Generate or hit; returns JSON with the key, the tier and a URL for the image."""
        request = GenerationRequest(**params.model_dump(exclude={"no_cache"}))
        result = await service.generate(request, namespace=namespace, no_cache=params.no_cache)
        body = {
            "key": result.key,
            "cache": result.cache,
            "duration": round(result.duration, 6),
            "seed": result.seed,
            "width": result.request.width,
            "height": result.request.height,
            "steps": result.request.steps,
            "image_url": _image_url(result),
        }
        return JSONResponse(body, headers=_result_headers(result))

    @app.post("/generate", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def generate(
        body: GenerationRequest,
        namespace: Namespace,
        no_cache: Annotated[bool, Query(description="Neither read nor write the cache.")] = False,
    ) -> Response:
        """The official Z-Image `api.py` shape: JSON in, image bytes out."""
        result = await service.generate(body, namespace=namespace, no_cache=no_cache)
        return Response(
            result.entry.data, media_type=result.entry.media_type, headers=_result_headers(result)
        )

    @app.post("/api/generate")
    async def generate_batch(body: BatchRequest, namespace: Namespace) -> JSONResponse:
        """Up to 8 images of one prompt, each with its own seed; hits and misses mixed."""
        request = GenerationRequest(**body.model_dump(exclude={"batch_size", "no_cache"}))
        results = await service.generate_batch(
            request, body.batch_size, namespace=namespace, no_cache=body.no_cache
        )
        images = [
            {"key": r.key, "cache": r.cache, "seed": r.seed, "image_url": _image_url(r)} for r in results
        ]
        duration = max(r.duration for r in results)
        return JSONResponse({"images": images, "duration": round(duration, 6)})

    @app.get("/images/{name}", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def image(name: str, request: Request, namespace: Namespace) -> Response:
        """Stored bytes by key; immutable, so browsers and proxies may keep them forever."""
        match = IMAGE_NAME.fullmatch(name)
        if match is None:
            return JSONResponse({"detail": "expected /images/<64 hex key>.<png|jpeg|webp>"}, status_code=404)
        key, ext = match.groups()
        etag = f'"{key}"'
        hit = await service.lookup(namespace, key)
        if not isinstance(hit, Hit) or hit.entry.ext != ext:
            return JSONResponse(
                {"detail": "no such image in the cache (evicted, or never made)"}, status_code=404
            )
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "X-Cache": hit.tier}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(hit.entry.data, media_type=hit.entry.media_type, headers=headers)

    @app.get("/api/cache/stats")
    async def cache_stats(_: Namespace) -> dict[str, Any]:
        """Requests, generations (pipeline runs), hit rate, and per-tier hits, entries and bytes."""
        return await asyncio.to_thread(service.stats)

    @app.delete("/api/cache")
    async def clear_cache(
        request: Request, namespace: Annotated[str, Query(description="The namespace to empty.")]
    ) -> dict[str, Any]:
        """Remove every entry of a namespace from every tier. Needs the admin token."""
        access.require_admin(request)
        if not is_namespace(namespace):
            raise RequestInvalid("namespace", f"namespace {namespace!r} must be 1-64 of a-z, 0-9, _ and -")
        removed = await asyncio.to_thread(service.cache.clear, namespace)
        return {"namespace": namespace, "removed": removed}

    @app.get("/api/info")
    async def api_info(_: Namespace) -> dict[str, Any]:
        """Versions, the model and its fingerprint, device, dtype, and the cache configuration."""
        identity = engine.identity
        model = {"spec": engine.model_spec, "state": engine.state, "error": engine.error}
        model |= {"attention": engine.attention_in_use, "compiled": engine.compiled}
        if identity is not None:
            model |= {
                "id": identity.model_id,
                "fingerprint": identity.fingerprint,
                "device": identity.device,
                "dtype": identity.dtype,
                "quantize": identity.quantize,
                "placement": engine.placement.as_dict() if engine.placement else None,
                "demo": identity.demo,
                "sizes": [identity.min_size, identity.max_size],
            }
        return {
            **(info or {}),
            "model": model,
            "queue": {"max": engine.max_queue, "waiting": engine.queue_depth},
            "auth": {"api_keys": bool(access.api_keys), "admin": bool(access.admin_token)},
        }

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Prometheus exposition: requests by tier, latency histograms, queue depth, cache sizes."""
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _image_url(result: GenerationResult) -> str | None:
    # A bypassed result is not stored, so there is nothing to fetch later.
    return None if result.cache == BYPASS_TIER else f"/images/{result.key}.{result.entry.ext}"


def _result_headers(result: GenerationResult) -> dict[str, str]:
    timing = [f"total;dur={result.duration * 1000:.3f}"]
    timing += [f"{name};dur={seconds * 1000:.3f}" for name, seconds in result.timings.items()]
    return {
        "X-Cache": result.cache,
        "X-Seed": str(result.seed),
        "X-Key": result.key,
        "Server-Timing": ", ".join(timing),
    }


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def unprocessable(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the pydantic context objects; keep what a
        # client needs: where, and what to change.
        detail = [
            {"type": e["type"], "loc": list(e["loc"]), "msg": str(e["msg"]).removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(RequestInvalid)
    async def invalid(request: Request, exc: RequestInvalid) -> JSONResponse:
        where = "header" if exc.field == "x-namespace" else "body" if request.method == "POST" else "query"
        detail = [{"type": "value_error", "loc": [where, exc.field], "msg": exc.message}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    @app.exception_handler(GenerationFailed)
    async def failed(request: Request, exc: GenerationFailed) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=500)
