"""Image inputs (issue 24 section 2): safe decoding, the key by decoded pixels, and
img2img and inpainting on the tiny model through the one generation path."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cache import DiskTier, LayeredCache, MemoryTier
from pipeline.batching import batch_key
from pipeline.engine import Engine
from pipeline.errors import RequestInvalid
from pipeline.image_input import (
    ImageInput,
    check_strength,
    decode_image,
    decode_mask,
    mask_from_alpha,
)
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from tests.engines import pixels

SIZE = 64


def encoded(array: np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **options)
    return out.getvalue()


def picture(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A deterministic RGB test picture: smooth gradients with a little texture."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    base = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2, np.full((size, size), 90.0)], -1
    )
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def square_mask(size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return mask


# -- decoding ---------------------------------------------------------------------------


def test_the_same_pixels_in_png_and_lossless_webp_have_one_hash_and_one_changed_pixel_another() -> None:
    array = picture()
    png = decode_image(encoded(array, "PNG"), "image")
    webp = decode_image(encoded(array, "WEBP", lossless=True), "image")
    assert png.sha256 == webp.sha256
    changed = array.copy()
    changed[5, 7, 1] ^= 1
    assert decode_image(encoded(changed), "image").sha256 != png.sha256


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\x00" * 64, "not a PNG, JPEG or WebP"),
        (b"%PDF-1.4 not an image", "not a PNG, JPEG or WebP"),
        (encoded(picture())[:200], "could not be decoded"),
    ],
)
def test_bad_bytes_are_refused_naming_the_field(data: bytes, words: str) -> None:
    with pytest.raises(RequestInvalid) as caught:
        decode_image(data, "init_images[0]")
    assert caught.value.field == "init_images[0]"
    assert words in caught.value.message


def test_a_gif_is_refused_even_though_pillow_reads_it() -> None:
    gif = io.BytesIO()
    Image.fromarray(picture()).save(gif, format="GIF")
    with pytest.raises(RequestInvalid, match="not a PNG, JPEG or WebP"):
        decode_image(gif.getvalue(), "image")


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding() -> None:
    # 4096 x 4096 of one colour: a 50 KB PNG that decodes to 48 MB.
    bomb = encoded(np.zeros((4096, 4096), np.uint8))
    assert len(bomb) < 100_000
    with pytest.raises(RequestInvalid) as caught:
        decode_image(bomb, "image")
    assert caught.value.field == "image" and "4096x4096" in caught.value.message
    # Past Pillow's own limit too (its DecompressionBombError becomes our 422).
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, format="PNG")
    with pytest.raises(RequestInvalid, match="pixels"):
        decode_image(huge.getvalue(), "image")


def test_an_animated_webp_is_refused_and_a_cameras_multi_picture_jpeg_is_its_first_picture() -> None:
    frames = [Image.fromarray(picture(i)) for i in range(2)]
    animated = io.BytesIO()
    frames[0].save(animated, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    with pytest.raises(RequestInvalid, match="animated"):
        decode_image(animated.getvalue(), "image")
    mpo = io.BytesIO()
    frames[0].save(mpo, format="MPO", save_all=True, append_images=frames[1:], quality=95)
    first = io.BytesIO()
    frames[0].save(first, format="JPEG", quality=95)
    assert decode_image(mpo.getvalue(), "image").sha256 == decode_image(first.getvalue(), "image").sha256


def test_exif_orientation_is_applied() -> None:
    array = picture(size=SIZE)[:, : SIZE // 2]  # 32 wide, 64 tall
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(out.getvalue(), "image")
    assert decoded.size == (SIZE, SIZE // 2)  # upright: wide, not tall


def test_alpha_is_flattened_over_white_and_a_transparent_mask_marks_what_is_repainted() -> None:
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[: SIZE // 2, :, 3] = 0  # top half fully transparent
    data = encoded(rgba)
    image = np.asarray(decode_image(data, "image").pixels)
    assert (image[: SIZE // 2] == 255).all() and (image[SIZE // 2 :] == 0).all()
    mask = np.asarray(decode_mask(data, "mask").pixels)
    assert (mask[: SIZE // 2] == 255).all() and (mask[SIZE // 2 :] == 0).all()
    alpha_mask = mask_from_alpha(data, "image")
    assert alpha_mask is not None and alpha_mask.sha256 == decode_mask(data, "mask").sha256
    assert mask_from_alpha(encoded(picture()), "image") is None  # opaque: the whole image


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan"), "much"])
def test_a_strength_outside_0_to_1_is_refused_naming_the_field(strength: object) -> None:
    with pytest.raises(RequestInvalid) as caught:
        check_strength("denoising_strength", strength)  # type: ignore[arg-type]
    assert caught.value.field == "denoising_strength"


# -- generation on the tiny model ---------------------------------------------------------


def request(prompt: str = "a lantern", **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=SIZE, height=SIZE, steps=kw.pop("steps", 4), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def service(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> GenerationService:
    cache_dir: Path = tmp_path_factory.mktemp("edit-cache")
    return GenerationService(engine, LayeredCache([MemoryTier(1 << 22), DiskTier(cache_dir)]))


def edit(data: bytes, strength: float = 0.75, mask: bytes | None = None) -> ImageInput:
    return ImageInput(
        decode_image(data, "image"),
        strength,
        decode_mask(mask, "mask") if mask is not None else None,
    )


def test_img2img_is_keyed_by_pixels_and_strength_and_differs_from_text_to_image(
    service: GenerationService,
) -> None:
    array = picture(1)

    async def scenario() -> None:
        first = await service.generate(request(seed=5), image=edit(encoded(array)))
        assert first.cache == "miss"
        again = await service.generate(request(seed=5), image=edit(encoded(array)))
        assert (again.cache, again.key) == ("memory", first.key)
        webp = await service.generate(request(seed=5), image=edit(encoded(array, "WEBP", lossless=True)))
        assert (webp.cache, webp.key) == ("memory", first.key)
        changed = array.copy()
        changed[0, 0, 0] ^= 1
        one_pixel = await service.generate(request(seed=5), image=edit(encoded(changed)))
        assert one_pixel.cache == "miss" and one_pixel.key != first.key
        weaker = await service.generate(request(seed=5), image=edit(encoded(array), strength=0.5))
        assert weaker.cache == "miss" and weaker.key != first.key
        plain = await service.generate(request(seed=5))
        assert plain.key != first.key
        assert not np.array_equal(pixels(plain.entry.data), pixels(first.entry.data))
        assert not np.array_equal(pixels(weaker.entry.data), pixels(first.entry.data))
        assert first.entry.meta["edit"] == "img2img"

    asyncio.run(scenario())


def test_inpainting_keeps_what_the_mask_keeps_and_its_mask_is_in_the_key(service: GenerationService) -> None:
    array = picture(2)

    async def scenario() -> None:
        masked = await service.generate(
            request(seed=9), image=edit(encoded(array), 1.0, encoded(square_mask()))
        )
        assert masked.cache == "miss" and masked.entry.meta["edit"] == "inpaint"
        img2img = await service.generate(request(seed=9), image=edit(encoded(array), 1.0))
        assert img2img.key != masked.key
        other_mask = square_mask()
        other_mask[0, 0] = 255
        moved = await service.generate(request(seed=9), image=edit(encoded(array), 1.0, encoded(other_mask)))
        assert moved.cache == "miss" and moved.key != masked.key
        out = pixels(masked.entry.data).astype(int)
        # The kept border stays near the input (the VAE's round trip); the repainted centre does not.
        border = np.ones((SIZE, SIZE), bool)
        border[SIZE // 4 - 8 : 3 * SIZE // 4 + 8, SIZE // 4 - 8 : 3 * SIZE // 4 + 8] = False
        centre = ~border
        centre[: SIZE // 4 + 8, :] = centre[3 * SIZE // 4 - 8 :, :] = False
        kept = np.abs(out - array)[border].mean()
        repainted = np.abs(out - array)[centre].mean()
        assert repainted > kept

    asyncio.run(scenario())


def test_the_edit_pipelines_share_the_loaded_modules(engine: Engine, service: GenerationService) -> None:
    asyncio.run(service.generate(request("shared", seed=1), image=edit(encoded(picture(3)))))
    img2img = engine._edits.for_input(edit(encoded(picture(3))))  # type: ignore[union-attr]
    inpaint = engine._edits.for_input(edit(encoded(picture(3)), 1.0, encoded(square_mask())))  # type: ignore[union-attr]
    for pipe in (img2img, inpaint):
        assert pipe.transformer is engine._pipe.transformer
        assert pipe.vae is engine._pipe.vae
        assert pipe.text_encoder is engine._pipe.text_encoder


def test_edits_are_never_batched_across_requests() -> None:
    canonical = request(seed=1).canonical()
    assert batch_key(canonical)[:4] == (SIZE, SIZE, 4, 0.0)  # type: ignore[index]
    assert batch_key(canonical, image=edit(encoded(picture()))) is None  # its own model call


def test_an_upload_is_parsed_in_memory_never_spooled_to_disk() -> None:
    # Starlette's own parser rolls a file part over 1 MB into a temporary file on disk.
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    from web.uploads import InMemoryParser

    noisy = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    image = encoded(noisy)
    assert len(image) > 2 << 20
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = Headers({"content-type": f"multipart/form-data; boundary={boundary}"})

    async def parse(parser_class: type[MultiPartParser]) -> bool:
        async def stream():  # type: ignore[no-untyped-def]
            yield body

        form = await parser_class(headers, stream(), max_part_size=1 << 20).parse()
        upload = form["image"]
        assert await upload.read() == image  # type: ignore[union-attr]
        return upload.file._rolled  # type: ignore[union-attr]

    assert asyncio.run(parse(MultiPartParser)) is True  # the default writes it to disk
    assert asyncio.run(parse(InMemoryParser)) is False
