"""A1111's `POST /sdapi/v1/img2img`: its image fields, and the input they make.

`init_images` (base64, the first is used; a `data:` URL prefix is accepted, as
A1111 accepts it), `mask` (inpainting: white repainted), `inpainting_mask_invert`
(1: black repainted) and `denoising_strength` (default 0.75, A1111's). The rest of
the body is txt2img's (web/a1111.py). A1111's other inpainting knobs
(`mask_blur`, `inpainting_fill`, `inpaint_full_res`, ...) are accepted and
ignored, as any unknown field is: the pipeline repaints the mask as it is.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from pydantic import BaseModel, Field

from pipeline.errors import RequestInvalid
from pipeline.image_input import DEFAULT_IMG2IMG_STRENGTH, ImageInput, edit_input


class Img2ImgFields(BaseModel):
    init_images: list[str] = Field(
        description="Base64 images (PNG, JPEG or WebP, at most 2048x2048); the first is edited."
    )
    mask: str | None = Field(None, description="Base64 mask for inpainting: white is repainted.")
    inpainting_mask_invert: int = Field(0, description="1: the mask's black is repainted instead.")
    denoising_strength: float = Field(
        DEFAULT_IMG2IMG_STRENGTH, description="How much of the image is repainted: above 0, at most 1."
    )


async def img2img_input(body: Img2ImgFields) -> ImageInput:
    """The edit `body` asks for, decoded off the event loop; RequestInvalid naming the field."""
    if not body.init_images:
        raise RequestInvalid("init_images", "init_images is empty; send one base64 image")
    image = base64_field("init_images[0]", body.init_images[0])
    mask = base64_field("mask", body.mask) if body.mask else None
    return await asyncio.to_thread(
        edit_input,
        image,
        "init_images[0]",
        mask_data=mask,
        strength=body.denoising_strength,
        strength_field="denoising_strength",
        invert_mask=bool(body.inpainting_mask_invert),
    )


def base64_field(field: str, text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestInvalid(field, f"{field} is not valid base64") from None
