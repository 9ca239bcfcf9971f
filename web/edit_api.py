"""`POST /api/edit`: our own image-input route (img2img, inpainting with a mask, and
ControlNet with a control image).

Multipart in (the image and an optional mask as files, the other fields as text),
LoRAs as `loras`, a JSON text field in /api/generate's shape (the edit pipelines
share the transformer, so a LoRA applies to an edit as to a generation; in the key
by content and scale). JSON out in /api/generate's shape, each image stored and served under
`/images/<key>.<ext>` like any other. The uploads are read in memory and decoded
safely (web/uploads.py, pipeline/image_input.py); only their pixels' hash enters
the key. Namespaces and API keys apply as on every route.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from pipeline import limits
from pipeline.controlnet import (
    CONTROL_KINDS,
    DEFAULT_CONTROL_SCALE,
    MAX_CONTROL_SCALE,
    EditInput,
    control_input,
)
from pipeline.errors import RequestInvalid
from pipeline.image_input import (
    DEFAULT_IMG2IMG_STRENGTH,
    DEFAULT_INPAINT_STRENGTH,
    MAX_UPLOAD_BYTES,
    decode_image,
    edit_input,
    size_for,
)
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from web.auth import NamespacedRoute, UiOrCallerNamespace
from web.disconnect import unless_client_leaves
from web.schemas import BatchImage, error_responses, image_path
from web.uploads import EDIT_PATH, file_field, read_form, text_fields

# The request's own fields, as text fields of the form (width and height default to
# the image's size, snapped to a multiple of 16).
REQUEST_FIELDS = {"prompt", "negative_prompt", "seed", "steps", "guidance_scale", "format", "width", "height"}
FORM_FIELDS = REQUEST_FIELDS | {
    "strength",
    "batch_size",
    "no_cache",
    "control_kind",
    "control_scale",
    "response_format",
    "loras",
}
RESPONSE_FORMATS = ("url", "b64_json")


class EditImage(BatchImage):
    b64_json: str | None = Field(
        None,
        description="With `response_format=b64_json`: the image itself, base64 (a bypassed "
        "result has no `image_url`; the UI's image tab reads it here).",
    )


class EditResult(BaseModel):
    images: list[EditImage]
    kind: str = Field(description="`img2img`, `inpaint` when a mask was sent, `control` for a control image.")
    strength: float
    width: int
    height: int
    duration: float = Field(description="Seconds spent in the service for the slowest image.")


EDIT_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": f"PNG, JPEG or WebP, at most 2048x2048 pixels and {MAX_UPLOAD_BYTES >> 20} MB.",
                        },
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "Inpainting: white (or, in a mask with alpha, transparent) is repainted.",
                        },
                        "control_image": {
                            "type": "string",
                            "format": "binary",
                            "description": "ControlNet (with --controlnet), instead of `image`: an edge, depth "
                            "or pose map the output follows.",
                        },
                        "control_kind": {"type": "string", "enum": list(CONTROL_KINDS)},
                        "control_scale": {
                            "type": "number",
                            "description": f"0..{MAX_CONTROL_SCALE:g}, default {DEFAULT_CONTROL_SCALE}.",
                        },
                        "prompt": {"type": "string"},
                        "loras": {
                            "type": "string",
                            "description": 'JSON, as /api/generate\'s `loras`: `[{"name": "tiny-demo", '
                            '"scale": 0.8}]`; `/api/info` lists the names.',
                        },
                        "negative_prompt": {"type": "string"},
                        "strength": {
                            "type": "number",
                            "description": f"Above 0, at most 1; default {DEFAULT_IMG2IMG_STRENGTH} "
                            f"({DEFAULT_INPAINT_STRENGTH} with a mask).",
                        },
                        "seed": {"type": "integer"},
                        "steps": {"type": "integer"},
                        "guidance_scale": {"type": "number"},
                        "width": {"type": "integer", "description": "Default: the image's width, snapped."},
                        "height": {"type": "integer", "description": "Default: the image's height, snapped."},
                        "format": {"type": "string", "enum": list(limits.IMAGE_FORMATS)},
                        "batch_size": {"type": "integer", "minimum": 1, "maximum": limits.MAX_API_BATCH},
                        "no_cache": {"type": "boolean"},
                        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
                    },
                }
            }
        },
    }
}


def create_edit_router(service: GenerationService) -> APIRouter:
    router = APIRouter(route_class=NamespacedRoute)

    @router.post(
        EDIT_PATH,
        response_model=EditResult,
        responses=error_responses(401, 403, 413, 422, 500, 503),
        openapi_extra=EDIT_FORM,
    )
    async def edit(namespace: UiOrCallerNamespace, raw: Request) -> dict[str, Any]:
        """An image edited by a prompt: img2img, or inpainting with a mask; up to 8 seeds."""
        form = await read_form(raw)
        fields = text_fields(form, FORM_FIELDS)
        control_data = await file_field(form, "control_image", required=False)
        image: EditInput
        if control_data is not None:  # ControlNet: a control image instead of an image to edit
            if "image" in form:
                raise RequestInvalid("control_image", "send either an image to edit or a control image")
            scale = fields.get("control_scale")
            image = control_input(
                await asyncio.to_thread(decode_image, control_data, "control_image"),
                fields.get("control_kind", ""),
                _number("control_scale", scale) if scale is not None else None,
                await service.controlnet_fingerprint(),
            )
        else:
            image_data = await file_field(form, "image", required=True)
            mask_data = await file_field(form, "mask", required=False)
            assert image_data is not None
            strength = fields.get("strength")
            image = await asyncio.to_thread(
                edit_input,
                image_data,
                "image",
                mask_data=mask_data,
                strength=_number("strength", strength) if strength is not None else None,
            )
        identity = await service.model_identity()
        width, height = size_for(image.image, identity.min_size, identity.max_size)
        values: dict[str, Any] = {"width": width, "height": height}
        values |= {name: fields[name] for name in REQUEST_FIELDS & fields.keys()}
        if "loras" in fields:
            values["loras"] = _json("loras", fields["loras"])
        try:
            request = GenerationRequest(**values)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        batch_size = int(_number("batch_size", fields.get("batch_size", "1")))
        if batch_size != _number("batch_size", fields.get("batch_size", "1")) or not (
            1 <= batch_size <= limits.MAX_API_BATCH
        ):
            raise RequestInvalid(
                "batch_size", f"batch_size must be a whole number, 1..{limits.MAX_API_BATCH}"
            )
        no_cache = fields.get("no_cache", "false").lower() in ("1", "true", "yes", "on")
        response_format = fields.get("response_format", "url")
        if response_format not in RESPONSE_FORMATS:
            raise RequestInvalid(
                "response_format", f"response_format must be one of {', '.join(RESPONSE_FORMATS)}"
            )
        results = await unless_client_leaves(
            raw,
            service.generate_batch(request, batch_size, namespace=namespace, no_cache=no_cache, image=image),
        )
        return {
            "images": [
                {
                    "key": r.key,
                    "cache": r.cache,
                    "seed": r.seed,
                    "duration": round(r.duration, 6),
                    "image_url": image_path(r),
                }
                | (
                    {"b64_json": base64.b64encode(r.entry.data).decode()}
                    if response_format == "b64_json"
                    else {}
                )
                for r in results
            ],
            "kind": image.kind,
            "strength": image.strength,
            "width": request.width,
            "height": request.height,
            "duration": round(max(r.duration for r in results), 6),
        }

    return router


def _json(field: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise RequestInvalid(
            field, f'{field} must be JSON, e.g. [{{"name": "tiny-demo", "scale": 0.8}}]'
        ) from None


def _number(field: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RequestInvalid(field, f"{field} must be a number (got {text!r})") from None
