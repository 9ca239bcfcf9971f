"""The MCP tool `edit_image`: img2img or inpainting, the image given as base64 or as
the URL of an image already in this server's cache; or, with `--controlnet`, a
`control_image` (in the same forms) with its `control_kind` and `control_scale`.

A URL is never fetched: only `/images/<key>.<ext>` (absolute or not) is accepted,
and looked up in the caller's own namespace, so a tool call can neither reach
another host nor read another tenant's images. The rest is `/api/edit`'s: the same
decoding (pipeline/image_input.py), key and service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Request
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field, ValidationError

from cache import Hit
from pipeline import limits
from pipeline.controlnet import (
    CONTROL_KINDS,
    DEFAULT_CONTROL_SCALE,
    MAX_CONTROL_SCALE,
    EditInput,
    control_input,
)
from pipeline.errors import RequestInvalid
from pipeline.image_input import decode_image, edit_input, size_for
from pipeline.request import GenerationRequest
from pipeline.results import GenerationResult
from pipeline.service import GenerationService
from web.errors import EXPECTED, user_message

CACHED_IMAGE = re.compile(r"/images/([0-9a-f]{64})\.(png|jpeg|webp)")
IMAGE_HELP = (
    "The image: base64 (PNG, JPEG or WebP, at most 2048x2048; a data: URL is fine), or the URL of an "
    "image this server made (the `url` a generate_image or edit_image call returned)."
)


def add_edit_tool(
    mcp: MCPServer,
    service: GenerationService,
    namespace_of: Callable[[Request], str],
    answer: Callable[[GenerationResult, Request], Awaitable[CallToolResult]],
    error: Callable[[str], CallToolResult],
) -> None:
    """Register `edit_image` on `mcp`, answering as generate_image does (`answer`, `error`)."""

    @mcp.tool(name="edit_image", title="Edit an image")
    async def edit_image(
        prompt: Annotated[str, Field(description="What the edited image shows.")],
        ctx: Context,
        image: Annotated[str, Field(description=IMAGE_HELP + " Not with control_image.")] = "",
        mask: Annotated[
            str, Field(description="Optional mask, in the same forms: white is repainted (inpainting).")
        ] = "",
        strength: Annotated[
            float | None,
            Field(description="How much is redrawn, above 0 and at most 1 (default 0.75; 1 with a mask)."),
        ] = None,
        seed: Annotated[
            int, Field(description=f"0..{limits.MAX_SEED}; {limits.RANDOM_SEED} draws one.")
        ] = limits.RANDOM_SEED,
        steps: Annotated[
            int, Field(description=f"{limits.MIN_STEPS}..{limits.MAX_STEPS}.")
        ] = limits.DEFAULT_STEPS,
        negative_prompt: Annotated[str, Field(description="Only used when guidance_scale > 0.")] = "",
        guidance_scale: Annotated[
            float, Field(description="0 (off) suits this model best.")
        ] = limits.DEFAULT_GUIDANCE,
        control_image: Annotated[
            str,
            Field(
                description="ControlNet, instead of image (servers started with --controlnet): an edge, "
                "depth or pose map the new image follows, in the same forms as image."
            ),
        ] = "",
        control_kind: Annotated[
            str, Field(description=f"What control_image is: {', '.join(CONTROL_KINDS)}.")
        ] = "",
        control_scale: Annotated[
            float | None,
            Field(
                description=f"How closely control_image is followed, 0..{MAX_CONTROL_SCALE:g} "
                f"(default {DEFAULT_CONTROL_SCALE})."
            ),
        ] = None,
    ) -> CallToolResult:
        """Edit an image with Z-Image-Turbo: img2img, or inpainting with a mask; or make one that
        follows a control image (ControlNet). The output has the image's size (snapped to a
        multiple of 16). Returns its URL and a small preview."""
        request = ctx.request_context.request
        namespace = namespace_of(request)
        try:
            edit: EditInput
            if control_image:
                if image or mask:
                    raise RequestInvalid("control_image", "send either an image to edit or a control_image")
                data = await _image_bytes(service, namespace, "control_image", control_image)
                edit = control_input(
                    await asyncio.to_thread(decode_image, data, "control_image"),
                    control_kind,
                    control_scale,
                    await service.controlnet_fingerprint(),
                )
            elif not image:
                raise RequestInvalid("image", "image is missing: send an image to edit (or a control_image)")
            else:
                image_data = await _image_bytes(service, namespace, "image", image)
                mask_data = await _image_bytes(service, namespace, "mask", mask) if mask else None
                edit = await asyncio.to_thread(
                    edit_input, image_data, "image", mask_data=mask_data, strength=strength
                )
            identity = await service.model_identity()
            width, height = size_for(edit.image, identity.min_size, identity.max_size)
            generation = GenerationRequest(
                prompt=prompt,
                negative_prompt=negative_prompt,
                width=width,
                height=height,
                seed=seed,
                steps=steps,
                guidance_scale=guidance_scale,
            )
            result = await service.generate(generation, namespace=namespace, image=edit)
        except (ValidationError, *EXPECTED) as exc:
            message = user_message(exc)
            field = getattr(exc, "field", None)
            return error(f"{field}: {message}" if field and field not in message else message)
        return await answer(result, request)


async def _image_bytes(service: GenerationService, namespace: str, field: str, value: str) -> bytes:
    """The bytes `value` names: a cached image of `namespace` by its URL, else base64."""
    match = CACHED_IMAGE.fullmatch(urlsplit(value).path) if "/images/" in value else None
    if match is not None:
        hit = await service.lookup(namespace, match.group(1), match.group(2))
        if not isinstance(hit, Hit):
            raise RequestInvalid(field, f"{field}: no image at {value} in this server's cache")
        return hit.entry.data
    text = value.partition(",")[2] if value.startswith("data:") else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestInvalid(
            field, f"{field} is neither base64 nor the URL of an image in this server's cache"
        ) from None
