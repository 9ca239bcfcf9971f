"""Input images (img2img, inpainting): decoded safely, identified by their pixels.

An uploaded file is untrusted bytes. `decode_image` opens it with Pillow, allowing
PNG, JPEG and WebP only, reads the size from the header and refuses more than
MAX_INPUT_PIXELS (2048²) before decoding a single pixel (a decompression bomb: a
few KB of PNG that would inflate to gigabytes), refuses animations, truncated and
corrupt files, applies the EXIF orientation (a phone photo is the right way up),
and flattens alpha: an image over white, a mask by its own rule (`decode_mask`).
Every failure is RequestInvalid naming the field (a 422), never a 500.

The result is the decoded pixels and their SHA-256 (over the size, the mode and the
raw bytes), which is what the cache key holds (pipeline/keys.py `inputs`): the same
pixels as PNG or lossless WebP are the same key; one changed pixel is another.
The bytes and pixels live in memory only, for the request: nothing here writes them
anywhere (DESIGN: input images are never stored; only their hash is).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

from pipeline.errors import RequestInvalid
from pipeline.request import snap_size

# 2048 x 2048: the largest image the model makes, and the most an input may decode to.
MAX_INPUT_PIXELS = 2048 * 2048
# The upload routes' body limit (web/body_limit.py): a 2048² PNG is at most ~16 MB.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# A1111's default denoising strength; inpainting repaints its mask fully by default.
DEFAULT_IMG2IMG_STRENGTH = 0.75
DEFAULT_INPAINT_STRENGTH = 1.0
# How an input image is brought to the request's size: stretched with Lanczos, as
# A1111's default resize mode ("Just resize"). Part of the key: another way is another image.
RESIZE = "stretch-lanczos"


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """Pixels of an input: `mode` "RGB" (an image) or "L" (a mask), and their SHA-256."""

    pixels: Any  # PIL.Image.Image, decoded, in `mode`
    sha256: str

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.size


@dataclass(frozen=True, eq=False)
class ImageInput:
    """What a request adds to its prompt: an image, its strength, and for inpainting a
    mask (white, or transparent where the mask has alpha: repainted)."""

    image: DecodedImage
    strength: float
    mask: DecodedImage | None = None

    @property
    def kind(self) -> str:
        return "inpaint" if self.mask is not None else "img2img"

    def key_fields(self) -> dict[str, Any]:
        """The `inputs` section's entry (pipeline/keys.py): every part of this input that
        changes the output, by content, never a file's name or bytes."""
        return {
            "image": {
                "kind": self.kind,
                "pixels": self.image.sha256,
                "mask": self.mask.sha256 if self.mask is not None else None,
                "strength": self.strength,
                "resize": RESIZE,
            }
        }

    def fitted(self, width: int, height: int) -> tuple[Any, Any | None]:
        """The image (and mask) at the request's size, as the pipeline takes them."""
        from PIL import Image

        def fit(decoded: DecodedImage) -> Any:
            if decoded.size == (width, height):
                return decoded.pixels
            return decoded.pixels.resize((width, height), Image.Resampling.LANCZOS)

        return fit(self.image), fit(self.mask) if self.mask is not None else None


def edit_input(
    image_data: bytes,
    image_field: str,
    *,
    mask_data: bytes | None = None,
    mask_field: str = "mask",
    strength: float | None = None,
    strength_field: str = "strength",
    invert_mask: bool = False,
    alpha_mask: bool = False,
) -> ImageInput:
    """A request's input from its uploaded bytes: the image, the mask (inverted when
    asked, as A1111's `inpainting_mask_invert`; with `alpha_mask` and no mask, the
    image's transparent pixels, as OpenAI's edits), and the strength (by default
    DEFAULT_INPAINT_STRENGTH with a mask, else DEFAULT_IMG2IMG_STRENGTH). Errors name
    the field at fault. CPU work (decoding): call it off the event loop."""
    image = decode_image(image_data, image_field)
    mask = decode_mask(mask_data, mask_field) if mask_data is not None else None
    if mask is None and alpha_mask:
        mask = mask_from_alpha(image_data, image_field)
    if mask is not None and invert_mask:
        from PIL import ImageOps

        mask = _identified(ImageOps.invert(mask.pixels))
    if strength is None:
        strength = DEFAULT_INPAINT_STRENGTH if mask is not None else DEFAULT_IMG2IMG_STRENGTH
    return ImageInput(image, check_strength(strength_field, strength), mask)


def check_strength(field: str, strength: float) -> float:
    """`strength` as a float in (0, 1], else RequestInvalid naming `field`."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise RequestInvalid(field, f"{field} must be a number above 0 and at most 1") from None
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise RequestInvalid(field, f"{field} must be above 0 and at most 1 (got {strength})")
    return value


def decode_image(data: bytes, field: str) -> DecodedImage:
    """An input image as RGB pixels: alpha composited over white. RequestInvalid naming
    `field` for anything but a sound PNG, JPEG or WebP of at most MAX_INPUT_PIXELS."""
    image = _open(data, field)
    if _has_alpha(image):
        from PIL import Image

        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return _identified(image.convert("RGB"))


def decode_mask(data: bytes, field: str) -> DecodedImage:
    """A mask as grey levels, 255 where the image is repainted. A mask with alpha follows
    OpenAI's rule (fully transparent: repainted, the rest kept); one without, the
    diffusers and A1111 rule (white: repainted, black: kept)."""
    image = _open(data, field)
    if _has_alpha(image):
        alpha = image.convert("RGBA").getchannel("A")
        return _identified(alpha.point(lambda a: 255 if a == 0 else 0))
    return _identified(image.convert("L"))


def mask_from_alpha(data: bytes, field: str) -> DecodedImage | None:
    """OpenAI's edit without a mask: the image's own fully transparent pixels are the
    mask; None when it has none (then the whole image is edited: img2img)."""
    image = _open(data, field)
    if not _has_alpha(image):
        return None
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] != 0:
        return None
    return _identified(alpha.point(lambda a: 255 if a == 0 else 0))


def size_for(image: DecodedImage, low: int, high: int) -> tuple[int, int]:
    """The output size an edit defaults to: the image's own, each side snapped to a
    valid size (a multiple of 16 within `low..high`)."""
    width, height = image.size
    return snap_size(width, low, high), snap_size(height, low, high)


def _identified(image: Any) -> DecodedImage:
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return DecodedImage(pixels=image, sha256=digest.hexdigest())


def _has_alpha(image: Any) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _open(data: bytes, field: str) -> Any:
    """Open, check and decode `data`: the format and the pixel count are judged from the
    header, before any pixel is decoded; then decoded whole and turned upright."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise RequestInvalid(field, f"{field} is empty; send a PNG, JPEG or WebP image")
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestInvalid(field, f"{field} is over {MAX_UPLOAD_BYTES >> 20} MB")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its limit raises) on bombs: ours is stricter.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            width, height = image.size
            if width * height > MAX_INPUT_PIXELS:
                raise RequestInvalid(
                    field,
                    f"{field} is {width}x{height} pixels; at most {MAX_INPUT_PIXELS} (2048x2048) are accepted",
                )
            # A camera's JPEG may carry more pictures (MPO: a depth or gain map after the
            # photo); the first is the photo. An animated PNG or WebP has no one picture.
            if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:
                raise RequestInvalid(field, f"{field} is animated; send a still image")
            image.load()
            return ImageOps.exif_transpose(image)
    except RequestInvalid:
        raise
    except Image.DecompressionBombError:
        raise RequestInvalid(
            field, f"{field} has too many pixels; at most {MAX_INPUT_PIXELS} (2048x2048) are accepted"
        ) from None
    except UnidentifiedImageError:
        raise RequestInvalid(field, f"{field} is not a PNG, JPEG or WebP image") from None
    except Exception as exc:  # untrusted bytes: any decoder failure is the input's
        # Truncated or corrupt data (Pillow raises OSError, SyntaxError, ValueError... from its decoders).
        raise RequestInvalid(field, f"{field} could not be decoded ({exc}); send a valid image") from None
