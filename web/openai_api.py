"""OpenAI-compatible Images API: `POST /v1/images/generations` and `GET /v1/models`.

Clients built for OpenAI's image endpoint (the `openai` SDK, Open WebUI,
LibreChat, LiteLLM) work unchanged against `<server>/v1`. Each request goes
through `GenerationService.generate_batch`, so the same cache, namespaces and
API keys apply; errors answer in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import limits
from pipeline.errors import RequestInvalid, validation_message
from pipeline.limits import ImageFormat
from pipeline.lora import LoraSpec, loras_field
from pipeline.request import GenerationRequest, seed_field, snap_size, steps_field
from pipeline.results import GenerationResult
from pipeline.service import GenerationService
from web.auth import Namespace, NamespacedRoute
from web.errors import EXPECTED, failure_of
from web.public_urls import image_url
from web.schemas import Tier, error_responses, image_path

MODEL_ID = "z-image-turbo"
DEFAULT_OPENAI_SIZE = f"{limits.DEFAULT_SIZE}x{limits.DEFAULT_SIZE}"
SIZE = re.compile(r"\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*")
# Our field names where OpenAI's differ, for the `param` of an error.
OPENAI_PARAM = {"width": "size", "height": "size", "format": "output_format"}


class OpenAIImageRequest(BaseModel):
    """The body of `POST /v1/images/generations`. OpenAI's fields, plus `seed`,
    `steps`, `negative_prompt`, `guidance_scale` and `loras` (the SDK's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description=f"What to draw; 1 to {limits.MAX_PROMPT_CHARS} characters.")
    model: str | None = Field(
        None, description=f"Accepted whatever it names: this server serves one model (`{MODEL_ID}`)."
    )
    n: int | None = Field(
        1, ge=1, le=limits.MAX_API_BATCH, description=f"Images to make, 1..{limits.MAX_API_BATCH}."
    )
    size: str | None = Field(
        DEFAULT_OPENAI_SIZE,
        description=f"`WIDTHxHEIGHT` or `auto` ({DEFAULT_OPENAI_SIZE}); each side is snapped to the nearest "
        f"multiple of {limits.SIZE_MULTIPLE} and clamped to the model's range ({limits.REAL_MODEL_MIN_SIZE}..{limits.MAX_SIZE}; "
        f"{limits.MIN_SIZE}..{limits.MAX_SIZE} for the demo model).",
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        None,
        description="`b64_json` (the image inline) or `url` (an absolute URL of the stored image). "
        "Unset: `b64_json` when `model` starts with `gpt-image`, else `url`, as OpenAI does.",
    )
    output_format: ImageFormat | None = Field(limits.DEFAULT_FORMAT, description="`png`, `jpeg` or `webp`.")
    user: str | None = Field(None, description="An end-user id; accepted and not stored.")
    quality: str | None = Field(None, description="Accepted and ignored.")
    style: str | None = Field(None, description="Accepted and ignored.")
    background: str | None = Field(None, description="Accepted and ignored.")
    moderation: str | None = Field(None, description="Accepted and ignored.")
    output_compression: int | None = Field(None, description="Accepted and ignored.")
    partial_images: int | None = Field(None, description="Accepted and ignored (no streaming).")
    safety_identifier: str | None = Field(None, description="An end-user id; accepted and not stored.")
    stream: bool | None = Field(False, description="Streaming is not supported; `true` is refused.")
    seed: int = seed_field(limits.RANDOM_SEED)
    steps: int = steps_field()
    loras: list[LoraSpec] = loras_field()
    negative_prompt: str = Field("", description="What to avoid; only used when guidance_scale > 0.")
    guidance_scale: float = Field(
        limits.DEFAULT_GUIDANCE,
        description=f"Classifier-free guidance, 0..{limits.MAX_GUIDANCE:g}; 0 (Turbo) turns it off.",
    )


class OpenAIImage(BaseModel):
    b64_json: str | None = Field(None, description="The image, base64-encoded (`response_format=b64_json`).")
    url: str | None = Field(
        None,
        description="The stored image (`response_format=url`); a `data:` URL for an image that is never "
        "stored (a do-not-cache prompt).",
    )
    seed: int = Field(description="Extension: the seed of this image; ask again with it to hit the cache.")
    cache: Tier = Field(description="Extension: the cache tier that answered (`miss`: generated).")


class OpenAIImagesResponse(BaseModel):
    created: int = Field(description="Unix time of the response.")
    data: list[OpenAIImage]
    output_format: ImageFormat
    size: str = Field(description="`WIDTHxHEIGHT` of the images, after snapping.")


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error`, `authentication_error`, `server_error`, ...")
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


class OpenAIRequestError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


# OpenAI's `code` for the API keys' refusals (web/auth.py raises them as HTTPException).
AUTH_CODES = {401: "invalid_api_key", 403: "namespace_mismatch"}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error")}
    body |= {"param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class OpenAIRoute(NamespacedRoute):
    """A route whose every error (bad input, auth, overload) answers in OpenAI's shape;
    bad input is a 400 naming the parameter, as OpenAI's API does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer_openai_style(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIRequestError as exc:
                return openai_error(exc.status, exc.message, param=exc.param, code=exc.code)
            except (RequestValidationError, ValidationError) as exc:
                error = exc.errors()[0]
                return openai_error(400, _message(error), param=_param(error["loc"]), code="invalid_value")
            except RequestInvalid as exc:
                field = OPENAI_PARAM.get(exc.field, exc.field)
                return openai_error(400, exc.message, param=field, code="invalid_value")
            except HTTPException as exc:
                return openai_error(
                    exc.status_code,
                    str(exc.detail),
                    code=AUTH_CODES.get(exc.status_code),
                    headers=exc.headers,
                )
            except EXPECTED as exc:  # the shared table; its bad input (422) is OpenAI's 400 above
                failure = failure_of(exc)
                return openai_error(failure.status, str(exc), code=failure.code, headers=failure.headers())

        return answer_openai_style


def default_response_format(model: str | None) -> str:
    """OpenAI's default: DALL-E-era clients read `url` unless they ask for base64;
    gpt-image clients always get `b64_json`."""
    return "b64_json" if (model or "").startswith("gpt-image") else "url"


def parse_size(size: str | None, low: int, high: int) -> tuple[int, int]:
    """`WIDTHxHEIGHT` (or `auto`) -> each side rounded to the nearest multiple of 16
    (halves up) and clamped to `low..high`. Raises OpenAIRequestError when unreadable."""
    if size is None or size.strip().lower() == "auto":
        size = DEFAULT_OPENAI_SIZE
    match = SIZE.fullmatch(size)
    if match is None:
        raise OpenAIRequestError(
            400, f"size {size!r} is not WIDTHxHEIGHT; write e.g. 1024x1024", param="size", code="invalid_size"
        )
    return snap_size(int(match.group(1)), low, high), snap_size(int(match.group(2)), low, high)


def create_openai_router(service: GenerationService) -> APIRouter:
    """The /v1 routes, authenticated and namespaced like the rest of the API."""
    router = APIRouter(prefix="/v1", route_class=OpenAIRoute, tags=["OpenAI-compatible"])

    @router.post(
        "/images/generations",
        response_model=OpenAIImagesResponse,
        response_model_exclude_none=True,
        responses=error_responses(400, 401, 403, 413, 500, 503, model=OpenAIError),
    )
    async def image_generations(
        body: OpenAIImageRequest, request: Request, namespace: Namespace
    ) -> OpenAIImagesResponse:
        """OpenAI's image generation: `n` images of one prompt, as base64 or URLs."""
        if body.stream:
            raise OpenAIRequestError(400, "streaming is not supported; leave `stream` out", param="stream")
        identity = await service.model_identity()
        width, height = parse_size(body.size, identity.min_size, identity.max_size)
        output_format = body.output_format or limits.DEFAULT_FORMAT
        generation = GenerationRequest(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            seed=body.seed,
            width=width,
            height=height,
            steps=body.steps,
            guidance_scale=body.guidance_scale,
            format=output_format,
            loras=body.loras,
        )
        results = await service.generate_batch(generation, body.n or 1, namespace=namespace)
        as_url = (body.response_format or default_response_format(body.model)) == "url"
        return OpenAIImagesResponse(
            created=int(time.time()),
            data=[_image(result, request, as_url, namespace) for result in results],
            output_format=output_format,
            size=f"{width}x{height}",
        )

    @router.get(
        "/models", response_model=OpenAIModelList, responses=error_responses(400, 401, 403, model=OpenAIError)
    )
    async def models(_: Namespace) -> OpenAIModelList:
        """The one model this server serves."""
        return OpenAIModelList(data=[OpenAIModel(id=MODEL_ID, created=0, owned_by="Tongyi-MAI")])

    return router


def _image(result: GenerationResult, request: Request, as_url: bool, namespace: str) -> OpenAIImage:
    entry = result.entry
    if not as_url:
        return OpenAIImage(
            b64_json=base64.b64encode(entry.data).decode(), seed=result.seed, cache=result.cache
        )
    path = image_path(result)
    if path is None:  # never stored, so no URL would find it: the bytes themselves
        url = f"data:{entry.media_type};base64,{base64.b64encode(entry.data).decode()}"
    else:
        url = image_url(request, path, namespace)  # signed with API keys: downloads send no token
    return OpenAIImage(url=url, seed=result.seed, cache=result.cache)


def _param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    names = [str(part) for part in loc if part not in ("body", "query", "header")]
    if not names:
        return None
    return OPENAI_PARAM.get(names[0], names[0])


def _message(error: Any) -> str:
    param = _param(error["loc"])
    msg = validation_message(error)
    if error["type"] == "extra_forbidden":
        return f"unrecognized request argument: {param}"
    return msg if param is None or param in msg else f"{param}: {msg}"
