"""OpenAI's `POST /v1/images/edits`: an image (and a mask) edited by a prompt.

Multipart, as the `openai` SDK's `images.edit` sends it: `image` (or `image[]`, the
first of them), `mask`, `prompt`, `n`, `size`, `response_format`, `output_format`;
other OpenAI fields (`model`, `quality`, `background`, ...) are accepted and ignored.
Without a mask, the image's fully transparent pixels are the mask, as OpenAI reads
it; an opaque image is edited whole (img2img). Our extensions ride in the same form
(the SDK's `extra_body`): `strength`, `seed`, `steps`, `guidance_scale`,
`negative_prompt`. Errors answer in OpenAI's shape, 400 naming the parameter.
OpenAI's shape has no ControlNet: a `control_image`, `control_kind` or
`control_scale` is refused (400 naming it, and the routes that take one) rather
than ignored into an img2img the caller did not ask for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from pipeline import limits
from pipeline.errors import RequestInvalid
from pipeline.image_input import edit_input, size_for
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from web.auth import Namespace
from web.openai_api import (
    OpenAIError,
    OpenAIImagesResponse,
    OpenAIRoute,
    _image,
    default_response_format,
    parse_size,
)
from web.schemas import error_responses
from web.uploads import OPENAI_EDITS_PATH, file_field, read_form, text_fields

TEXT_FIELDS = {
    "prompt",
    "n",
    "size",
    "response_format",
    "output_format",
    "model",
    "strength",
    "seed",
    "steps",
    "guidance_scale",
    "negative_prompt",
}
OURS = {"prompt", "negative_prompt", "seed", "steps", "guidance_scale"}
# /api/edit's ControlNet fields, which this route does not take.
CONTROL_FIELDS = ("control_image", "control_kind", "control_scale")

BINARY = {"type": "string", "format": "binary"}
EDITS_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {**BINARY, "description": "PNG, JPEG or WebP, at most 2048x2048 and 20 MB."},
                        "mask": {**BINARY, "description": "Fully transparent pixels are edited."},
                        "prompt": {"type": "string"},
                        "n": {"type": "integer", "minimum": 1, "maximum": limits.MAX_API_BATCH},
                        "size": {"type": "string", "description": "`WIDTHxHEIGHT`, or `auto`: the image's."},
                        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                        "output_format": {"type": "string", "enum": list(limits.IMAGE_FORMATS)},
                        "strength": {"type": "number", "description": "Ours: above 0, at most 1."},
                        "seed": {"type": "integer"},
                        "steps": {"type": "integer"},
                        "guidance_scale": {"type": "number"},
                        "negative_prompt": {"type": "string"},
                    },
                }
            }
        },
    }
}


def create_openai_edits_router(service: GenerationService) -> APIRouter:
    router = APIRouter(route_class=OpenAIRoute, tags=["OpenAI-compatible"])

    @router.post(
        OPENAI_EDITS_PATH,
        response_model=OpenAIImagesResponse,
        response_model_exclude_none=True,
        responses=error_responses(400, 401, 403, 413, 500, 503, model=OpenAIError),
        openapi_extra=EDITS_FORM,
    )
    async def image_edits(request: Request, namespace: Namespace) -> OpenAIImagesResponse:
        """OpenAI's image edit: `n` edits of the uploaded image, as base64 or URLs."""
        form = await read_form(request)
        fields = text_fields(form, TEXT_FIELDS)
        for control in CONTROL_FIELDS:
            if control in form:
                raise RequestInvalid(
                    control,
                    f"{control}: OpenAI's image edits have no ControlNet; send it to /api/edit, to "
                    "/sdapi/v1/txt2img as a ControlNet unit, or to MCP's edit_image",
                )
        name = "image" if "image" in form else "image[]"
        image_data = await file_field(form, name, required=True)
        mask_data = await file_field(form, "mask", required=False)
        assert image_data is not None
        strength = _number(fields, "strength")
        image = await asyncio.to_thread(
            edit_input, image_data, "image", mask_data=mask_data, strength=strength, alpha_mask=True
        )
        identity = await service.model_identity()
        if fields.get("size", "auto").strip().lower() == "auto":
            width, height = size_for(image.image, identity.min_size, identity.max_size)
        else:
            width, height = parse_size(fields["size"], identity.min_size, identity.max_size)
        output_format = fields.get("output_format", limits.DEFAULT_FORMAT)
        if output_format not in limits.IMAGE_FORMATS:
            raise RequestInvalid(
                "output_format", f"output_format must be one of {', '.join(limits.IMAGE_FORMATS)}"
            )
        n = _number(fields, "n") or 1
        if n != int(n) or not 1 <= n <= limits.MAX_API_BATCH:
            raise RequestInvalid("n", f"n must be a whole number, 1..{limits.MAX_API_BATCH}")
        values: dict[str, Any] = {name: fields[name] for name in OURS & fields.keys()}
        generation = GenerationRequest(**values, width=width, height=height, format=output_format)  # type: ignore[arg-type]
        response_format = fields.get("response_format") or default_response_format(fields.get("model"))
        if response_format not in ("url", "b64_json"):
            raise RequestInvalid("response_format", "response_format must be url or b64_json")
        results = await service.generate_batch(generation, int(n), namespace=namespace, image=image)
        return OpenAIImagesResponse(
            created=int(time.time()),
            data=[_image(r, request, response_format == "url", namespace) for r in results],
            output_format=output_format,
            size=f"{width}x{height}",
        )

    return router


def _number(fields: dict[str, str], name: str) -> float | None:
    if name not in fields:
        return None
    try:
        return float(fields[name])
    except ValueError:
        raise RequestInvalid(name, f"{name} must be a number (got {fields[name]!r})") from None
