"""Turning decoded pixels into image files: the NaN/black check, the lossless PNG
that is stored, JPEG and WebP made from that PNG, each with the generation
parameters inside, and the small pool that encodes off the engine thread."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from pipeline.errors import GenerationFailed

if TYPE_CHECKING:
    from pipeline.loading import ModelIdentity
    from pipeline.lora import LoraSet
    from pipeline.request import CanonicalRequest

# Threads that encode: PNG's zlib and Pillow's encoders release the GIL, so two
# images encode in parallel while the engine thread runs the next denoising.
ENCODE_THREADS = 2
# The one encoding a generation is stored in: lossless, so every other encoding is
# made from it (pipeline/derived.py) and a format is never a second generation.
STORED_FORMAT = "png"
# The settings of the encodings made from the stored PNG. Part of those encodings'
# keys (pipeline/derived.py): changing one makes new bytes under new keys.
DERIVED_SETTINGS: dict[str, dict[str, Any]] = {"jpeg": {"quality": 92}, "webp": {"quality": 92}}
# Jobs allowed to wait for encoding; past that the engine thread waits before it
# starts another generation (decoded pixels are 12 MB per 1024² image, and a CPU
# slower than the GPU must not let them pile up).
ENCODE_BACKLOG = 4


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    ext: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Rendered:
    """What the engine thread hands over: decoded pixels, float in [0, 1], one
    HxWx3 array per request, and the seconds each stage took."""

    pixels: Any  # numpy float32 array, batch x H x W x 3
    timings: dict[str, float]


def finish_images(
    rendered: Rendered, requests: list[CanonicalRequest], identity: ModelIdentity, loras: LoraSet = ()
) -> list[GeneratedImage]:
    """Check and encode a batch made with `loras`. Raises GenerationFailed for NaN values or an
    all-black image: neither may be stored or shown as a result."""
    import numpy as np

    pixels = rendered.pixels
    if not np.isfinite(pixels).all():
        quantized = ", --quantize fp8" if identity.quantize != "none" else ""
        raise GenerationFailed(f"the model produced NaN values ({identity.dtype}{quantized})")
    images = (pixels * 255).round().clip(0, 255).astype("uint8")
    if any(image.max() == 0 for image in images):
        raise GenerationFailed("the model produced an all-black image")
    out = []
    for image, request in zip(images, requests, strict=True):
        started = time.perf_counter()
        data = encode_image(image, request, identity, loras)
        timings = {**rendered.timings, "encode": time.perf_counter() - started}
        out.append(GeneratedImage(data=data, ext=STORED_FORMAT, timings=timings))
    return out


class EncodePool:
    """Runs `finish_images` on its own threads, so the engine thread is free for the
    next denoising while the last images are encoded.

    Guarantees: every accepted job resolves its future (images or the exception);
    at most ENCODE_BACKLOG jobs are pending, `submit` blocks the caller (the engine
    thread) past that; after `shutdown` a job runs on the calling thread instead.
    `busy` callbacks let the engine count encodes as work in flight.
    """

    def __init__(self, on_start: Callable[[], None], on_done: Callable[[], None]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="zimage-encode")
        self._slots = threading.Semaphore(ENCODE_BACKLOG)
        self._on_start, self._on_done = on_start, on_done

    def submit(
        self,
        rendered: Rendered,
        requests: list[CanonicalRequest],
        identity: ModelIdentity,
        result: Future[list[GeneratedImage]],
        loras: LoraSet = (),
    ) -> None:
        """Finish `rendered` (made with `loras`) and set `result` (which must be running) when done."""
        job = partial(finish_images, rendered, requests, identity, loras)
        self._slots.acquire()
        self._on_start()
        try:
            self._pool.submit(self._finish, job, result)
        except RuntimeError:  # shut down: the process is stopping; finish here
            self._finish(job, result)

    def shutdown(self) -> None:
        """Take no new jobs; those queued still finish."""
        self._pool.shutdown(wait=False)

    def _finish(self, job: Callable[[], list[GeneratedImage]], result: Future[list[GeneratedImage]]) -> None:
        try:
            result.set_result(job())
        except BaseException as exc:
            result.set_exception(exc)
        finally:
            self._slots.release()
            self._on_done()


def generation_parameters(request: CanonicalRequest, identity: ModelIdentity) -> dict[str, Any]:
    quantized = {"quantize": identity.quantize} if identity.quantize != "none" else {}
    return {**request.as_dict(), "model": identity.model_id, "fingerprint": identity.fingerprint, **quantized}


def encode_image(
    pixels: Any, request: CanonicalRequest, identity: ModelIdentity, loras: LoraSet = ()
) -> bytes:
    """Encode an HxWx3 uint8 array (made with `loras`) as the stored PNG with its
    generation parameters inside: the A1111 `parameters` text that image tools read and `zimage` JSON, as
    PNG text chunks (`transcode` carries both over into JPEG and WebP)."""
    from PIL import Image, PngImagePlugin

    from pipeline.image_metadata import a1111_parameters

    img = Image.fromarray(pixels, "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", a1111_parameters(request, identity, loras))
    info.add_itxt("zimage", json.dumps(generation_parameters(request, identity), ensure_ascii=False))
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


def transcode(png: bytes, ext: str) -> bytes:
    """The stored PNG `png` as `ext` (jpeg or webp, with DERIVED_SETTINGS), its
    parameters carried over as A1111 writes them there: the `parameters` text in the
    EXIF UserComment, the `zimage` JSON (ASCII-escaped) as the EXIF image description.
    Deterministic for given bytes and Pillow build. CPU-bound (a 1024x1024 image: about
    30 ms to JPEG, 180 ms to WebP): call it off the event loop."""
    from PIL import Image

    from pipeline.image_metadata import a1111_exif

    with Image.open(io.BytesIO(png)) as img:
        img.load()
        text = dict(getattr(img, "text", {}))
        params = json.dumps(json.loads(text.get("zimage", "{}")), ensure_ascii=True)
        exif = a1111_exif(text.get("parameters", ""), params)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, ext.upper(), exif=exif, **DERIVED_SETTINGS[ext])
    return buf.getvalue()
