"""HTTP routes: health, readiness, generation, stored images and cache stats."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from cache import Hit, is_namespace
from pipeline.engine import READY, Engine, GenerationFailed, ModelUnavailable, QueueFull
from pipeline.request import GenerationRequest, RequestInvalid
from pipeline.service import BYPASS_TIER, GenerationResult, GenerationService

IMAGE_NAME = re.compile(r"([0-9a-f]{64})\.(png|jpeg|webp)")
IMMUTABLE = "public, max-age=31536000, immutable"
DEFAULT_NAMESPACE = "public"
RETRY_AFTER_S = 5


class RunQuery(GenerationRequest):
    """The query string of `GET /run`: the request fields plus `no_cache`."""

    no_cache: bool = Field(False, description="Neither read nor write the cache; always generate.")


def namespace_of(
    x_namespace: Annotated[
        str, Header(description="Cache namespace of this request; an entry is never served to another.")
    ] = DEFAULT_NAMESPACE,
) -> str:
    if not is_namespace(x_namespace):
        raise RequestInvalid("x-namespace", f"X-Namespace {x_namespace!r} must be 1-64 of a-z, 0-9, _ and -")
    return x_namespace


Namespace = Annotated[str, Depends(namespace_of)]


def create_api(service: GenerationService, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="Z-Image-Turbo",
        summary="Z-Image-Turbo text-to-image behind a layered result cache.",
        docs_url="/docs",
        redoc_url=None,
    )
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
            # A bypassed result is not stored, so there is nothing to fetch later.
            "image_url": None if result.cache == BYPASS_TIER else f"/images/{result.key}.{result.entry.ext}",
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
    async def cache_stats() -> dict[str, Any]:
        """Requests, generations (pipeline runs), hit rate, and per-tier hits, entries and bytes."""
        return await asyncio.to_thread(service.stats)

    return app


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
