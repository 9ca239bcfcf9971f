"""The engine: owns the pipeline and runs every model call on one worker thread."""

from __future__ import annotations

import io
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.embeddings import MAX_SEQUENCE_LENGTH, EmbeddingCache
from pipeline.loading import NOISE_DEVICE, ModelIdentity, ModelOptions, load_pipeline, resolve_model
from pipeline.placement import Placement, text_encoder_device
from pipeline.request import CanonicalRequest

log = logging.getLogger(__name__)

LOADING, WARMING, READY, FAILED = "loading", "warming", "ready", "failed"
Progress = Callable[[int, int], None]  # (denoising steps done, steps in all)
Warmup = Callable[["Engine", ModelIdentity], None]  # runs on the engine thread after loading
# Errors after which the CUDA context is unusable: every later call fails too, so
# the process must end and be restarted (out of memory is not one of them).
FATAL_DEVICE_ERRORS = (
    "illegal memory access",
    "illegal instruction",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "uncorrectable ecc error",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "cuda error: unknown error",
    "cuda driver error",
    "device not ready",
    "gpu has fallen off the bus",
)


class QueueFull(Exception):
    """More generations are waiting than `max_queue` allows; retry later."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"the generation queue is full ({depth} waiting); retry shortly")
        self.depth = depth


class ModelUnavailable(Exception):
    """The model could not be loaded; nothing can be generated until a restart."""


class ShuttingDown(ModelUnavailable):
    """The process is stopping (SIGTERM): it finishes what it has and takes no new generations."""


class OutOfMemory(ModelUnavailable):
    """One image did not fit in device memory (after freeing what could be freed);
    answered 503, since it may fit once other work is done."""


class GenerationFailed(Exception):
    """The model ran but produced no usable image (an error, NaN or a black frame)."""


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    ext: str
    timings: dict[str, float] = field(default_factory=dict)


class Engine:
    """The only owner of the pipeline and the device.

    Guarantees: exactly one model call runs at a time, on a dedicated worker
    thread (never on the event loop); calls run in submission order; at most
    `max_queue` jobs wait to start (QueueFull past that); a job that has not
    started can be cancelled (`cancel`), and says its place in the queue (`position`). Loading and `warmup` (by
    default one smallest, one-step image) are the first job of that thread, so
    generations submitted meanwhile wait for them; ready means an image was made.
    After `close` every submit raises ShuttingDown. A fatal device error
    marks the engine failed and calls `on_fatal` (the app ends the process, for
    Supervisor to restart it).
    """

    def __init__(
        self,
        model_spec: str,
        models_dir: Path,
        *,
        max_queue: int = 64,
        embedding_cache_bytes: int = 256 << 20,
        warmup: Warmup | None = None,
        on_fatal: Callable[[str], None] | None = None,
        options: ModelOptions | None = None,
    ) -> None:
        self.model_spec = model_spec
        self.models_dir = models_dir
        self.options = options or ModelOptions()
        self.placement: Placement | None = None  # known once loaded
        self.max_queue = max_queue
        self.embeddings = EmbeddingCache(embedding_cache_bytes)
        self.encoder_runs = 0
        self.warmup = warmup
        self.on_fatal = on_fatal
        self.state = LOADING
        self.error: str | None = None
        self.fatal = False
        self.accepting = True
        self.identity_future: Future[ModelIdentity] = Future()
        self._pipe: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-engine")
        # Jobs submitted and not yet started, in submission order (dicts keep it).
        self._queued: dict[int, Future[list[GeneratedImage]]] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._idle = threading.Event()  # no job running on the worker
        self._idle.set()

    @property
    def identity(self) -> ModelIdentity | None:
        fut = self.identity_future
        return fut.result() if fut.done() and not fut.exception() else None

    @property
    def queue_depth(self) -> int:
        """Generation jobs submitted and not yet started."""
        return len(self._queued)

    def position(self, job: Future[list[GeneratedImage]]) -> int | None:
        """Where a job waits: 1 when it starts next, 2 after that, ...; None once it
        has started (or was cancelled)."""
        with self._lock:
            for place, queued in enumerate(self._queued.values(), 1):
                if queued is job:
                    return place
        return None

    def cancel(self, job: Future[list[GeneratedImage]]) -> bool:
        """Take a job that has not started out of the queue: True if it will never run;
        False if it is running or done (a running job always finishes)."""
        return job.cancel()

    def start(self, *, load: bool = True) -> None:
        """Resolve the model, then load and warm it, in the background. With `load`
        False only the identity is resolved (enough for cache lookups); the first
        generation loads the model (prewarm.py, whose fill may need no model at all)."""
        self._executor.submit(self._prepare, load)

    def submit(
        self,
        requests: list[CanonicalRequest],
        progress: Progress | None = None,
        *,
        embedding_scope: str | None = "public",
    ) -> Future[list[GeneratedImage]]:
        """Queue one generation job: the images of `requests` (same prompt and settings,
        different seeds) made in one batched pipeline call. `progress(step, steps)` is
        called from the engine thread after each denoising step. Prompt embeddings are
        looked up and kept under `embedding_scope` (the namespace); None neither looks
        them up nor keeps them (prompts that must not be kept anywhere). Raises
        QueueFull when `max_queue` jobs are already waiting to start."""
        if not self.accepting:
            raise ShuttingDown("the service is shutting down; retry shortly or on another replica")
        if self.state == FAILED:
            raise ModelUnavailable(f"the model failed: {self.error}")
        first = requests[0]
        if any(r.as_dict() | {"seed": 0} != first.as_dict() | {"seed": 0} for r in requests):
            raise ValueError("a batch must share everything but the seed")
        with self._lock:
            if len(self._queued) >= self.max_queue:
                raise QueueFull(len(self._queued))
            # Listed under the lock the job's own start needs to unlist it, so it is
            # listed before it can start.
            number = next(self._numbers)
            future = self._executor.submit(self._generate, number, requests, progress, embedding_scope)
            self._queued[number] = future
        future.add_done_callback(partial(self._unlist_cancelled, number))
        return future

    def close(self, timeout_s: float = 0.0) -> bool:
        """Cancel the jobs that have not started and wait up to `timeout_s` for the one
        running. True when the worker is idle; False when a job is still running, which
        the caller may abandon (a job writes nothing; storing is the service's)."""
        self.accepting = False
        self._executor.shutdown(wait=False, cancel_futures=True)
        return self._idle.wait(timeout_s)

    def run_now(self, requests: list[CanonicalRequest]) -> list[GeneratedImage]:
        """Generate on the calling thread, which must be the engine's (for `warmup`);
        keeps no prompt embeddings."""
        assert threading.current_thread().name.startswith("zimage-engine"), "run_now off the engine thread"
        return self._run(requests, self.identity_future.result(), embedding_scope=None)

    def _unlist_cancelled(self, number: int, future: Future[list[GeneratedImage]]) -> None:
        if future.cancelled():  # never started, so never unlisted in _generate
            with self._lock:
                self._queued.pop(number, None)

    def _prepare(self, load: bool) -> None:
        self._idle.clear()
        try:
            identity = resolve_model(self.model_spec, self.models_dir, self.options)
            self.identity_future.set_result(identity)
            if identity.demo:
                log.warning("DEMO MODEL: serving the tiny random-weight model; images are noise")
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = FAILED
            self.identity_future.set_exception(ModelUnavailable(self.error))
            log.exception("model not found")
        else:
            if load:
                self._load(identity)
        finally:
            self._idle.set()

    def _load(self, identity: ModelIdentity) -> None:
        try:
            started = time.perf_counter()
            log.info("loading %s on %s (%s)", identity.model_id, identity.device, identity.dtype)
            self._pipe, self.placement = load_pipeline(identity, self.options)
            log.info("model loaded in %.1f s; warming up", time.perf_counter() - started)
            self.state = WARMING
            if self.warmup is not None:
                self.warmup(self, identity)
            else:  # the least that proves the model makes an image
                size = identity.min_size
                self.run_now([CanonicalRequest("warm-up", "", 0, size, size, 1, 0.0, "png")])
            self.state = READY
            log.info("model ready in %.1f s", time.perf_counter() - started)
        except Exception as exc:
            if self.state != FAILED:
                self.error = f"{type(exc).__name__}: {exc}"
                self.state = FAILED
            log.exception("model failed to load")

    def _generate(
        self,
        number: int,
        requests: list[CanonicalRequest],
        progress: Progress | None,
        embedding_scope: str | None,
    ) -> list[GeneratedImage]:
        with self._lock:
            self._queued.pop(number, None)
        self._idle.clear()
        try:
            if self._pipe is None and self.state == LOADING:
                self._load(self.identity_future.result())  # started with load=False
            if self.state == FAILED or self._pipe is None:
                raise ModelUnavailable(f"the model failed: {self.error}")
            return self._run(requests, self.identity_future.result(), progress, embedding_scope)
        finally:
            self._idle.set()

    def _fail_fatally(self, exc: BaseException) -> None:
        """The device is unusable: refuse everything and let the process end."""
        self.error = f"unrecoverable device error: {type(exc).__name__}: {exc}"
        self.state = FAILED
        self.fatal = True
        self.accepting = False
        log.critical("%s; the process must restart", self.error)
        if self.on_fatal is not None:
            self.on_fatal(self.error)

    def _run(
        self,
        requests: list[CanonicalRequest],
        identity: ModelIdentity,
        progress: Progress | None = None,
        embedding_scope: str | None = None,
    ) -> list[GeneratedImage]:
        import numpy as np
        import torch

        request, batch = requests[0], len(requests)

        def step_done(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if progress is not None:
                progress(step + 1, request.steps)
            return {}

        try:
            # 1. Encode the prompt(s), or reuse the encoder's earlier output.
            started = time.perf_counter()
            device = torch.device(identity.device)
            prompt_embeds = self._embed(request.prompt, identity, device, embedding_scope) * batch
            negative_embeds = None
            if request.guidance_scale > 0:
                negative_embeds = (
                    self._embed(request.negative_prompt, identity, device, embedding_scope) * batch
                )
            text_s = time.perf_counter() - started

            # 2. Denoise and decode, always with explicit Turbo-style settings: the
            #    pipeline's own defaults (50 steps, CFG 5) are for the base model.
            #    One generator per image keeps each equal to itself made alone; on the
            #    CPU, so a seed's noise is the same whatever the GPU (the pipeline draws
            #    it there and moves it to the device).
            started = time.perf_counter()
            generators = [torch.Generator(device=NOISE_DEVICE).manual_seed(r.seed) for r in requests]
            pixels = self._pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                height=request.height,
                width=request.width,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                generator=generators,
                output_type="np",
                callback_on_step_end=step_done,
            ).images
            inference = time.perf_counter() - started
        except torch.OutOfMemoryError:
            pixels = None  # handled below, once the traceback no longer pins the tensors
        except Exception as exc:
            if is_fatal_device_error(exc):
                self._fail_fatally(exc)
                raise ModelUnavailable(self.error) from exc
            raise GenerationFailed(f"the model failed: {type(exc).__name__}: {exc}") from exc

        if pixels is None:
            # Out of memory: free what the failed call held, then make a batch in two
            # halves; a single image that does not fit is a 503, and the engine serves on.
            free_device_memory(identity.device)
            if batch > 1:
                log.warning("out of memory on a batch of %d; generating it in two halves", batch)
                half = batch // 2
                return self._run(requests[:half], identity, progress, embedding_scope) + self._run(
                    requests[half:], identity, progress, embedding_scope
                )
            raise OutOfMemory(
                f"the GPU ran out of memory for a {request.width}x{request.height} image; "
                "retry shortly, or ask for a smaller size"
            )

        # 3. Refuse what must never be stored or shown as a result.
        if not np.isfinite(pixels).all():
            raise GenerationFailed("the model produced NaN values (a known fp16 failure; serve in bfloat16)")
        images = (pixels * 255).round().clip(0, 255).astype("uint8")
        if any(image.max() == 0 for image in images):
            raise GenerationFailed("the model produced an all-black image")

        # 4. Encode each image, with its generation parameters inside the file.
        out = []
        for image, req in zip(images, requests, strict=True):
            started = time.perf_counter()
            data = encode_image(image, req, identity)
            timings = {"text": text_s, "inference": inference, "encode": time.perf_counter() - started}
            out.append(GeneratedImage(data=data, ext=req.format, timings=timings))
        return out

    def _embed(self, text: str, identity: ModelIdentity, device: Any, scope: str | None = None) -> list[Any]:
        """The text encoder's output for `text` on `device`, from the cache of `scope`
        when known; with no scope, encoded and kept nowhere."""

        def encode() -> list[Any]:
            import torch

            self.encoder_runs += 1
            # encode_prompt is not under no_grad (only the pipeline's __call__ is):
            # without it each cached embedding would keep the text encoder's whole
            # autograd graph alive, megabytes the cache's byte count never sees.
            with torch.no_grad():
                embeds, _ = self._pipe.encode_prompt(
                    prompt=text,
                    device=text_encoder_device(self._pipe),  # the CPU in text-encoder mode
                    do_classifier_free_guidance=False,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                )
            return [t.detach().to("cpu") for t in embeds]

        if scope is None:
            self.embeddings.count_miss()
            return [t.to(device) for t in encode()]
        key = (scope, text, MAX_SEQUENCE_LENGTH, identity.fingerprint, identity.dtype)
        return [t.to(device) for t in self.embeddings.get_or_encode(key, encode)]


def free_device_memory(device: str) -> None:
    """Drop what a failed call left behind: Python references, then the CUDA cache."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def is_fatal_device_error(exc: BaseException) -> bool:
    """Whether `exc` leaves the CUDA context broken (so only a new process can recover):
    only the errors FATAL_DEVICE_ERRORS lists, whatever the exception's class (an
    AcceleratorError can be a plain "out of memory" from outside the caching allocator).
    Out-of-memory errors are never fatal."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in FATAL_DEVICE_ERRORS)


def generation_parameters(request: CanonicalRequest, identity: ModelIdentity) -> dict[str, Any]:
    quantized = {"quantize": identity.quantize} if identity.quantize != "none" else {}
    return {**request.as_dict(), "model": identity.model_id, "fingerprint": identity.fingerprint, **quantized}


def encode_image(pixels: Any, request: CanonicalRequest, identity: ModelIdentity) -> bytes:
    """Encode an HxWx3 uint8 array with its generation parameters inside: the A1111
    `parameters` text that image tools read (a PNG text chunk; in JPEG and WebP the
    EXIF UserComment, as A1111 writes it), and `zimage` JSON (a PNG text chunk; the
    EXIF image description in JPEG and WebP)."""
    from PIL import Image, PngImagePlugin

    from pipeline.image_metadata import a1111_exif, a1111_parameters

    img = Image.fromarray(pixels, "RGB")
    params = generation_parameters(request, identity)
    readable = a1111_parameters(request, identity)
    buf = io.BytesIO()
    if request.format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", readable)
        info.add_itxt("zimage", json.dumps(params, ensure_ascii=False))
        img.save(buf, "PNG", pnginfo=info, compress_level=4)
    else:
        exif = a1111_exif(readable, json.dumps(params, ensure_ascii=True))
        img.save(buf, request.format.upper(), quality=92, exif=exif)
    return buf.getvalue()
