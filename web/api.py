"""HTTP routes: health, readiness, generation, stored images, stats, metrics, info, admin."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi_offline import FastAPIOffline
from starlette.routing import Route

from cache import DEFAULT_NAMESPACE, Hit, bad_namespace, is_namespace
from pipeline.engine import Engine, EngineState
from pipeline.errors import RequestInvalid
from pipeline.request import GenerationRequest
from pipeline.results import GenerationResult
from pipeline.service import GenerationService
from web.a1111 import create_a1111_router
from web.auth import BEARER, Access, ImageNamespace, Namespace, NamespacedRoute
from web.body_limit import BODY_TIMEOUT_S, BodyLimit
from web.conditional import MADE, conditional_response
from web.disconnect import unless_client_leaves
from web.edit_api import create_edit_router
from web.errors import install_error_handlers
from web.http_semantics import CorsHeaderPrefixes, CORSMiddleware, HeadAsGet, MethodNotAllowed, cors_options
from web.mcp_server import MCP_PATH, McpEndpoint, create_mcp_server
from web.metrics import Metrics
from web.openai_api import create_openai_router
from web.openai_edits import create_openai_edits_router
from web.public_urls import PUBLIC_URL_STATE
from web.schemas import (
    BatchRequest,
    BatchResult,
    CacheStats,
    ClearResult,
    GenerateQuery,
    Health,
    Info,
    Readiness,
    RunQuery,
    RunResult,
    error_responses,
    finish_openapi,
    image_path,
    image_response,
    query_parameters,
    read_query,
    similar_fields,
)
from web.uploads import UPLOAD_BODY_BYTES, UPLOAD_PATHS

IMAGE_NAME = re.compile(r"([0-9a-f]{64})\.(png|jpeg|webp)")
# A stored image never changes under its URL. Shared caches (a proxy, a CDN) may keep
# it only when anyone may fetch it: without API keys, in the default namespace.
# Otherwise only the caller's browser may, and Vary keeps a cache that ignores
# `private` from answering one caller with another's response.
PUBLIC_IMMUTABLE = "public, max-age=31536000, immutable"
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"
IMAGE_VARY = "Authorization, X-Namespace"
METRICS_TYPES = ("text/plain", "application/openmetrics-text")


def create_api(
    service: GenerationService,
    engine: Engine,
    *,
    access: Access | None = None,
    info: dict[str, Any] | None = None,
    cors_origins: Sequence[str] = (),
    body_timeout_s: float = BODY_TIMEOUT_S,
    public_url: str | None = None,
) -> FastAPI:
    """The HTTP API: our routes, the OpenAI, A1111 and MCP protocols, local /docs;
    HEAD on every GET route and the CORS policy of `cors_origins` (none: no
    cross-origin access) apply to whatever is mounted on it later (the UI), and so
    do the body limits (64 KB, whole within `body_timeout_s` of the head). Absolute
    URLs start with `public_url` when given (web/public_urls.py)."""
    access = access or Access()
    metrics = Metrics(service)
    mcp = McpEndpoint(create_mcp_server(service))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mcp.running():
            yield

    # FastAPIOffline serves Swagger UI's files itself: /docs works without a CDN.
    app = FastAPIOffline(
        title="Z-Image-Turbo",
        summary="Z-Image-Turbo text-to-image behind a layered result cache.",
        description="Every image route answers from the cache when it can (`X-Cache` says which tier) "
        "and generates otherwise. With API keys configured, send `Authorization: Bearer <token>`. "
        "Also spoken: OpenAI's Images API under `/v1`, A1111's under `/sdapi/v1`, and MCP at `/mcp`.",
        docs_url="/docs",
        redoc_url=None,
        static_url="/docs-assets",
        lifespan=lifespan,
    )
    app.state.access = access
    setattr(app.state, PUBLIC_URL_STATE, public_url)
    app.router.route_class = NamespacedRoute
    # Last added runs first: CORS answers preflights before anything else.
    # Image uploads: the edit routes, and MCP (whose edit_image takes an image as base64).
    larger = dict.fromkeys((*UPLOAD_PATHS, MCP_PATH), UPLOAD_BODY_BYTES)
    app.add_middleware(MethodNotAllowed, routes=app.router.routes)
    app.add_middleware(BodyLimit, timeout_s=body_timeout_s, larger=larger)
    app.add_middleware(HeadAsGet)
    app.add_middleware(CORSMiddleware, **cors_options(cors_origins))
    app.add_middleware(CorsHeaderPrefixes)
    install_error_handlers(app)
    finish_openapi(app)

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness; always fast, whatever the model is doing."""
        identity = engine.identity
        return {"status": "ok", "model": engine.state.value, "device": identity.device if identity else None}

    @app.get(
        "/ready",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready: loading, warming or failed."}},
    )
    async def ready() -> JSONResponse:
        """200 once the model is loaded and has produced an image, else 503 with its state."""
        if engine.state == EngineState.READY:
            return JSONResponse({"status": "ready"})
        body = {"status": engine.state.value}
        if engine.error:
            body["reason"] = engine.error
        return JSONResponse(body, status_code=503)

    @app.get(
        "/run",
        response_model=RunResult,
        responses=error_responses(401, 403, 422, 500, 503),
        openapi_extra={"parameters": query_parameters(RunQuery)},
    )
    async def run(namespace: Namespace, raw: Request) -> JSONResponse:
        """Generate or hit; returns JSON with the key, the tier and a URL for the image."""
        params = read_query(RunQuery, raw)  # not a parameter: see read_query
        # RunQuery is a GenerationRequest (no_cache aside, which canonical() leaves out).
        result = await unless_client_leaves(
            raw,
            service.generate(
                params,
                namespace=namespace,
                no_cache=params.no_cache,
                similar_threshold=params.similar_threshold,
                similar_mode=params.similar_mode,
            ),
        )
        # A response, not a dict: FastAPI would validate what is built right here
        # against RunResult once more, on every hit.
        body = {
            "key": result.key,
            "cache": result.cache,
            "duration": round(result.duration, 6),
            "seed": result.seed,
            "width": result.request.width,
            "height": result.request.height,
            "steps": result.request.steps,
            "image_url": image_path(result),
            **similar_fields(result),
        }
        return JSONResponse(body, headers=_result_headers(result))

    @app.post(
        "/generate",
        response_class=Response,
        responses={
            200: image_response("The image, in the requested format."),
            **error_responses(401, 403, 413, 422, 500, 503),
        },
        openapi_extra={"parameters": query_parameters(GenerateQuery)},
    )
    async def generate(body: GenerationRequest, namespace: Namespace, raw: Request) -> Response:
        """The official Z-Image `api.py` shape: JSON in, image bytes out."""
        query = read_query(GenerateQuery, raw)  # not a parameter: see read_query
        result = await unless_client_leaves(
            raw, service.generate(body, namespace=namespace, no_cache=query.no_cache)
        )
        return Response(
            result.entry.data, media_type=result.entry.media_type, headers=_result_headers(result)
        )

    @app.post(
        "/api/generate", response_model=BatchResult, responses=error_responses(401, 403, 413, 422, 500, 503)
    )
    async def generate_batch(body: BatchRequest, namespace: Namespace, raw: Request) -> dict[str, Any]:
        """Up to 8 images of one prompt, each with its own seed; hits and misses mixed."""
        request = GenerationRequest(
            **body.model_dump(exclude={"batch_size", "no_cache", "similar_threshold", "similar_mode"})
        )
        results = await unless_client_leaves(
            raw,
            service.generate_batch(
                request,
                body.batch_size,
                namespace=namespace,
                no_cache=body.no_cache,
                similar_threshold=body.similar_threshold,
                similar_mode=body.similar_mode,
            ),
        )
        images = [
            {
                "key": r.key,
                "cache": r.cache,
                "seed": r.seed,
                "duration": round(r.duration, 6),
                "image_url": image_path(r),
                **similar_fields(r),
            }
            for r in results
        ]
        similar = next(image.pop("similar") for image in images)  # the same for every image of a call
        duration = max(r.duration for r in results)
        return {"images": images, "duration": round(duration, 6), "similar": similar}

    @app.get(
        "/images/{name}",
        response_class=Response,
        responses={200: image_response("The stored image."), **error_responses(304, 401, 403, 404, 422)},
    )
    async def image(name: str, request: Request, namespace: ImageNamespace) -> Response:
        """Stored bytes by key, in any of the three formats whichever the image was first
        asked for in (a JPEG or WebP is made from the stored PNG once, then stored:
        `Server-Timing` shows `encode_<format>` when it was made for this request).
        Immutable: browsers may keep them forever, and shared caches too where anyone may
        fetch them (no API keys, default namespace); else `private`. Conditional
        (`If-Match`, `If-None-Match`, the dates against `Last-Modified`) and partial
        (`Range`, `If-Range`) requests are answered as RFC 9110 asks. With API keys,
        a signed URL (OpenAI's `url`) needs no token until it expires."""
        started = time.perf_counter()
        match = IMAGE_NAME.fullmatch(name)
        if match is None:
            return JSONResponse({"detail": "expected /images/<64 hex key>.<png|jpeg|webp>"}, status_code=404)
        key, ext = match.groups()
        etag = f'"{key}"'
        hit, made = await service.image(namespace, key, ext)
        if not isinstance(hit, Hit):
            return JSONResponse(
                {"detail": "no such image in the cache (evicted, or never made)"}, status_code=404
            )
        shared = not access.api_keys and namespace == DEFAULT_NAMESPACE
        timing = [f"total;dur={(time.perf_counter() - started) * 1000:.3f}"]
        timing += [f"{step};dur={seconds * 1000:.3f}" for step, seconds in made.items()]
        headers = {
            "ETag": etag,
            "Cache-Control": PUBLIC_IMMUTABLE if shared else PRIVATE_IMMUTABLE,
            "Vary": IMAGE_VARY,
            "X-Cache": hit.tier,
            "Server-Timing": ", ".join(timing),
        }
        made = hit.entry.meta.get(MADE)  # absent from entries made before it was recorded
        return conditional_response(hit.entry.data, hit.entry.media_type, headers, request.headers, made)

    @app.get("/api/cache/stats", response_model=CacheStats, responses=error_responses(401, 403, 422))
    async def cache_stats(_: Namespace) -> dict[str, Any]:
        """Requests, generations (pipeline runs), hit rate, and per-tier hits, entries and bytes."""
        return await asyncio.to_thread(service.stats)

    @app.delete("/api/cache", response_model=ClearResult, responses=error_responses(401, 403, 422))
    async def clear_cache(
        request: Request,
        namespace: Annotated[str, Query(description="The namespace to empty.")],
        _token: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
    ) -> dict[str, Any]:
        """Remove every entry of a namespace from every tier. Needs the admin token."""
        access.require_admin(request)
        if not is_namespace(namespace):
            raise RequestInvalid("namespace", bad_namespace(namespace))
        removed = await asyncio.to_thread(service.cache.clear, namespace)
        return {"namespace": namespace, "removed": removed}

    @app.get("/api/info", response_model=Info, responses=error_responses(401, 403, 422))
    async def api_info(_: Namespace) -> dict[str, Any]:
        """Versions, the model and its fingerprint, device, dtype, and the cache configuration."""
        identity = engine.identity
        model = {"spec": engine.model_spec, "state": engine.state.value, "error": engine.error}
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
            "loras": await asyncio.to_thread(engine.loras.listing, identity.demo) if identity else [],
        }

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format, or OpenMetrics when the Accept header asks for it.",
                "content": {media: {"schema": {"type": "string"}} for media in METRICS_TYPES},
            }
        },
    )
    async def prometheus(request: Request) -> Response:
        """Prometheus exposition: requests by tier, latency histograms, queue depth, cache sizes."""
        body, media_type = await asyncio.to_thread(metrics.render, request.headers.get("accept"))
        return Response(body, media_type=media_type)

    app.include_router(create_openai_router(service))
    app.include_router(create_a1111_router(service))
    app.include_router(create_openai_edits_router(service))
    app.include_router(create_edit_router(service))
    app.router.routes.append(Route(MCP_PATH, mcp))  # an ASGI app: every method, not in OpenAPI
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
