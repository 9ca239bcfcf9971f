"""Request and response models of the HTTP API, and the error answers each route documents.

FastAPI validates every JSON response against its model and publishes the
models in /openapi.json, so a generated client parses what the server sends.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from pipeline.limits import MAX_API_BATCH, MAX_LORAS
from pipeline.lora import LoraSpec, check_lora_count, parse_lora_arg
from pipeline.refine import SimilarMode
from pipeline.request import GenerationRequest
from pipeline.results import BYPASS_TIER, GenerationResult

Tier = Literal["memory", "disk", "redis", "miss", "bypass", "similar", "refined"]
ModelState = Literal["loading", "warming", "ready", "failed"]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
M = TypeVar("M", bound=BaseModel)


SIMILAR_THRESHOLD_HELP = (
    "Opt-in approximate hit: on a miss, answer with the stored image of the same namespace and size whose "
    "prompt is nearest, if its similarity (cosine, 0..1) is at least this, labelled `cache: similar`. "
    "Never the default."
)
SIMILAR_MODE_HELP = (
    "With `similar_threshold`: `serve` answers with the nearest stored image as it is (`cache: similar`); "
    "`refine` makes an img2img refinement of it under this prompt with half the denoising steps "
    "(`cache: refined`, its source in `refined_from`; a repeat is a hit that still names its source)."
)


class RunQuery(GenerationRequest):
    """The query string of `GET /run`: the request fields plus `no_cache` and
    `similar_threshold`; LoRAs as a repeatable `lora=name:0.8` (not `loras`)."""

    no_cache: bool = Field(False, description="Neither read nor write the cache; always generate.")
    similar_threshold: float | None = Field(None, gt=0, le=1, description=SIMILAR_THRESHOLD_HELP)
    similar_mode: SimilarMode = Field("serve", description=SIMILAR_MODE_HELP)
    lora: list[str] = Field(
        default_factory=list,
        description=f"A LoRA as `name:scale` (`name` alone: scale 1); repeat for more, up to {MAX_LORAS}. "
        "`/api/info` lists the names.",
        json_schema_extra={"maxItems": MAX_LORAS},
    )
    loras: SkipJsonSchema[list[LoraSpec]] = Field(default_factory=list)

    @field_validator("lora")
    @classmethod
    def _lora(cls, v: list[str]) -> list[str]:
        check_lora_count([parse_lora_arg(text) for text in v])
        return v

    @model_validator(mode="after")
    def _as_loras(self) -> RunQuery:
        if self.lora:
            self.loras = [parse_lora_arg(text) for text in self.lora]
        return self


class GenerateQuery(BaseModel):
    """The query string of `POST /generate`."""

    no_cache: bool = Field(False, description="Neither read nor write the cache.")


class BatchRequest(GenerationRequest):
    """The body of `POST /api/generate`: the request fields plus a batch size."""

    batch_size: int = Field(
        1,
        ge=1,
        le=MAX_API_BATCH,
        description=f"Images to make, 1..{MAX_API_BATCH}; image i has seed `seed + i` (each drawn when seed is -1).",
    )
    no_cache: bool = Field(False, description="Neither read nor write the cache; always generate.")
    similar_threshold: float | None = Field(
        None, gt=0, le=1, description=SIMILAR_THRESHOLD_HELP + " Only with `batch_size` 1."
    )
    similar_mode: SimilarMode = Field("serve", description=SIMILAR_MODE_HELP)


class ErrorDetail(BaseModel):
    type: str = Field(description="What kind of problem, e.g. `value_error`, `missing`, `int_parsing`.")
    loc: list[str | int] = Field(description="Where: `body`, `query` or `header`, then the field.")
    msg: str = Field(description="What is wrong and how to fix it.")


class ErrorResponse(BaseModel):
    """Every error of the service's own routes (the /v1 routes answer in OpenAI's shape)."""

    detail: str | list[ErrorDetail] = Field(
        description="A message, or for bad input (422) one entry per field at fault."
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: ModelState
    device: str | None = Field(description="`cuda` or `cpu`; null until the model is resolved.")


class Readiness(BaseModel):
    status: ModelState
    reason: str | None = Field(None, description="Why the model failed, when it did.")


class SimilarImage(BaseModel):
    """A stored image of the same namespace whose prompt is like the one asked for."""

    key: str
    prompt: str = Field(description="The prompt it was made for.")
    similarity: float = Field(description="Cosine similarity of the two prompts, 0..1.")
    image_url: str


class RunResult(BaseModel):
    key: str = Field(description="The cache key (SHA-256, hex).")
    cache: Tier = Field(description="The tier that answered; `miss` and `bypass` were generated.")
    duration: float = Field(description="Seconds spent in the service.")
    seed: int
    width: int
    height: int
    steps: int
    image_url: str | None = Field(description="Where to fetch the image; null for `bypass` (nothing stored).")
    similar: list[SimilarImage] = Field(
        description="On a miss: up to 4 stored images of this namespace made for similar prompts, nearest first."
    )
    similarity: float | None = Field(
        None, description="For `cache: similar`: how close the served prompt is."
    )
    original_prompt: str | None = Field(None, description="For `cache: similar`: the prompt it was made for.")
    refined_from: str | None = Field(
        None,
        description="A refinement (`similar_mode: refine`): the key of the stored image it was refined from; "
        "`similarity` and `original_prompt` then describe that image.",
    )


class BatchImage(BaseModel):
    key: str
    cache: Tier
    seed: int
    duration: float = Field(
        description="Seconds until this image was there: its lookup for a hit, its generation for a miss."
    )
    image_url: str | None
    similarity: float | None = Field(
        None, description="For `cache: similar`: how close the served prompt is."
    )
    original_prompt: str | None = Field(None, description="For `cache: similar`: the prompt it was made for.")
    refined_from: str | None = Field(
        None,
        description="A refinement (`similar_mode: refine`): the key of the stored image it was refined from; "
        "`similarity` and `original_prompt` then describe that image.",
    )


class BatchResult(BaseModel):
    images: list[BatchImage]
    similar: list[SimilarImage] = Field(
        description="When an image was a miss: up to 4 stored images of this namespace made for similar prompts."
    )
    duration: float = Field(description="Seconds spent in the service for the slowest image.")


class TierStats(BaseModel):
    hits: int
    entries: int | None = Field(description="null when the tier could not be counted (Redis down).")
    bytes: int | None
    errors: int


class EmbeddingStats(BaseModel):
    hits: int
    misses: int
    entries: int
    bytes: int


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    count: int


class NearRepeatStats(BaseModel):
    suggested: int = Field(description="Misses given near-repeat suggestions.")
    suggestions: int = Field(description="Suggestions shown.")
    used: int = Field(description="Suggestions a person used in the UI (a click on one).")
    approximate_hits: int = Field(description="Requests with `similar_threshold` answered `cache: similar`.")
    namespaces: int = Field(description="Namespace indexes loaded (per served model).")
    prompts: int = Field(description="Prompts in them.")


class CacheStats(BaseModel):
    requests: int = Field(description="Images asked for.")
    generations: int = Field(description="Pipeline runs of this process (a batch is one).")
    generated_images: int
    hit_rate: float
    tiers: dict[str, TierStats]
    embeddings: EmbeddingStats
    queue_depth: int
    latency: dict[str, Percentiles]
    near_repeats: NearRepeatStats | None = Field(None, description="Near-repeats; null when off.")


class ClearResult(BaseModel):
    namespace: str
    removed: dict[str, int | None] = Field(
        description="Entries removed per tier; null where the tier failed."
    )


class ModelInfo(BaseModel):
    spec: str
    state: ModelState
    error: str | None
    id: str | None = None
    fingerprint: str | None = None
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None
    placement: dict[str, Any] | None = Field(None, description="Where the model's parts live (--offload).")
    attention: str | None = Field(None, description="The attention backend in use (--attention-backend).")
    compiled: bool | None = Field(None, description="Whether the transformer is compiled (--compile).")
    demo: bool | None = None
    sizes: list[int] | None = Field(None, description="[smallest, largest] width and height.")


class QueueInfo(BaseModel):
    max: int
    waiting: int


class AuthInfo(BaseModel):
    api_keys: bool
    admin: bool


class Info(BaseModel):
    versions: dict[str, str | None] = Field(default_factory=dict)
    cache: dict[str, Any] = Field(default_factory=dict, description="The cache settings in force.")
    speed: dict[str, Any] = Field(
        default_factory=dict, description="--compile and --attention-backend as set."
    )
    model: ModelInfo
    queue: QueueInfo
    auth: AuthInfo
    loras: list[dict[str, Any]] = Field(
        default_factory=list, description="The LoRAs requests may name in `loras`: name, file name, size."
    )


ERROR_MEANINGS = {
    304: "Not modified: the `If-None-Match` ETag is current.",
    400: "Bad request.",
    401: "No or unknown API token (only when the server has `--api-keys`).",
    403: "The token is not allowed this (another namespace, or not the admin token).",
    404: "No such image in this namespace (evicted, never made, or another namespace's).",
    413: "Request body too large; a generation request is a few KB.",
    422: "Bad input: `detail` names each field at fault and how to fix it.",
    500: "The model produced no usable image (NaN or all black).",
    503: "Queue full, model not available, or shutting down; retry after `Retry-After` seconds.",
}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}


def error_responses(*codes: int, model: type[BaseModel] = ErrorResponse) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status it can answer besides 200."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": ERROR_MEANINGS[code]}
        if code != 304:
            entry["model"] = model
        if code == 503:
            entry["headers"] = RETRY_AFTER_HEADER
        out[code] = entry
    return out


def similar_fields(result: GenerationResult) -> dict[str, Any]:
    """`similar` (the near-repeats of a miss) and, for an approximate hit, its
    similarity and original prompt, as /run and /api/generate answer them."""
    fields: dict[str, Any] = {
        "similar": [
            {"key": m.key, "prompt": m.prompt, "similarity": m.score, "image_url": f"/images/{m.key}.png"}
            for m in result.similar
        ]
    }
    if result.near is not None:
        fields |= {"similarity": result.near.score, "original_prompt": result.near.prompt}
    if (source := result.refined_from) is not None:
        fields |= {"similarity": source.score, "original_prompt": source.prompt, "refined_from": source.key}
    return fields


def image_path(result: GenerationResult) -> str | None:
    """Where a stored image is fetched (`/images/<key>.<ext>`, relative to the server);
    None for a bypassed result, which is not stored, so nothing would find it later."""
    return None if result.cache == BYPASS_TIER else f"/images/{result.key}.{result.entry.ext}"


def image_response(description: str) -> dict[str, Any]:
    """A 200 of image bytes in any of the three formats (`format: binary`)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"description": description, "content": {media: binary for media in IMAGE_TYPES}}


# Query parameters given once per value (`lora=a:1&lora=b:0.5`).
MULTI_VALUED = frozenset({"lora"})


def read_query(model: type[M], request: Request) -> M:
    """The query string as `model`, for a route on the cache-hit path that reads it
    itself: FastAPI resolves an `Annotated[model, Query()]` parameter by re-inspecting
    every field's annotation on each request (45 us for RunQuery, half of a memory
    hit inside the app). Bad input raises what FastAPI raises, so it is answered the
    same way (422, `loc` starting with `query`); the route documents the fields with
    `openapi_extra={"parameters": query_parameters(model)}`."""
    params: dict[str, Any] = dict(request.query_params)
    for name in MULTI_VALUED.intersection(params):  # repeatable: every value
        params[name] = request.query_params.getlist(name)
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """`model`'s fields as OpenAPI query parameters, written as FastAPI writes those of
    an `Annotated[model, Query()]` parameter (flat fields only: no nested models)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, field_schema in schema["properties"].items():
        parameter = {"name": name, "in": "query", "required": name in required, "schema": field_schema}
        if "description" in field_schema:
            parameter["description"] = field_schema["description"]
        parameters.append(parameter)
    return parameters


def finish_openapi(app: FastAPI) -> None:
    """Finish the OpenAPI document: the bearer token is optional
    (`security: [{HTTPBearer: []}, {}]`), since routes need it only when the server
    has --api-keys, so a generated client may call them with or without one; and the
    /v1 routes, which answer bad input with OpenAI's 400, lose FastAPI's stock 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if {} not in operation.get("security", [{}]):
                        operation["security"].append({})
                    if path.startswith("/v1/"):
                        operation["responses"].pop("422", None)
        return build()

    app.openapi = openapi  # type: ignore[method-assign]
