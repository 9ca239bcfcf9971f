"""The engine: owns the pipeline and runs every model call on one worker thread."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.attention import apply_backend, choose_backend, model_attention_shape
from pipeline.compile import (
    CompileSetting,
    compile_transformer,
    compiled_graphs,
    should_compile,
    use_cache_dir,
)
from pipeline.embeddings import MAX_SEQUENCE_LENGTH, EmbeddingCache
from pipeline.encoding import EncodePool, GeneratedImage, GenerationFailed, Rendered, finish_images
from pipeline.fit import FitRecord
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
    """One image no larger than one made before did not fit in device memory (after
    freeing what could be freed): something else holds memory, so it is answered 503
    and may fit later."""


class Engine:
    """The only owner of the pipeline and the device.

    Guarantees: exactly one model call runs at a time, on a dedicated worker
    thread (never on the event loop); calls run in submission order; at most
    `max_queue` jobs wait to start (QueueFull past that); a job that has not
    started can be cancelled (`cancel`), and says its place in the queue
    (`position`). Loading and `warmup` (by default one smallest, one-step image)
    are the first job of that thread, so
    generations submitted meanwhile wait for them; ready means an image was made.
    The worker hands decoded pixels to a small encoding pool (pipeline.encoding)
    and starts the next job while they are checked and encoded. After `close`
    every submit raises ShuttingDown. A fatal device error marks the engine failed
    and calls `on_fatal` (the app ends the process, for Supervisor to restart it).

    Speed levers, applied after loading: `attention_backend` (pipeline.attention)
    and `compile` (pipeline.compile; its caches under `compile_cache_dir`).
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
        attention_backend: str = "auto",
        compile: CompileSetting = "auto",
        compile_cache_dir: Path | None = None,
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
        self.attention_backend = attention_backend
        self.compile = compile
        self.compile_cache_dir = compile_cache_dir
        self.attention_in_use: str | None = None  # the backend chosen at load
        self.compiled = False
        self.fits = FitRecord()
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
        # Work in flight: the engine's job and the encodes it handed over.
        self._busy = 0
        self._quiet = threading.Condition()
        self._encoder = EncodePool(on_start=self._work_started, on_done=self._work_done)

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
        QueueFull when `max_queue` jobs are already waiting to start, ImageTooLarge for
        a size at least as large as one that did not fit before. The future resolves
        once the images are encoded; cancelling it before the job starts drops the job."""
        if not self.accepting:
            raise ShuttingDown("the service is shutting down; retry shortly or on another replica")
        if self.state == FAILED:
            raise ModelUnavailable(f"the model failed: {self.error}")
        first = requests[0]
        if any(r.as_dict() | {"seed": 0} != first.as_dict() | {"seed": 0} for r in requests):
            raise ValueError("a batch must share everything but the seed")
        self.fits.check(first.width, first.height)
        with self._lock:
            if len(self._queued) >= self.max_queue:
                raise QueueFull(len(self._queued))
            number = next(self._numbers)
            result: Future[list[GeneratedImage]] = Future()
            job = self._executor.submit(self._generate, number, requests, progress, embedding_scope, result)
            # Listed under the lock the job's own start needs to unlist it, so it is
            # listed before it can start.
            self._queued[number] = result
        job.add_done_callback(lambda job: self._cancelled(number, job, result))
        result.add_done_callback(lambda result: self._unlist_cancelled(number, result))
        return result

    def close(self, timeout_s: float = 0.0) -> bool:
        """Cancel the jobs that have not started and wait up to `timeout_s` for the one
        running and the images being encoded. True when nothing is left running; False
        otherwise, which the caller may abandon (a job writes nothing; storing is the
        service's)."""
        self.accepting = False
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._quiet:
            quiet = self._quiet.wait_for(lambda: self._busy == 0, timeout_s)
        if quiet:
            self._encoder.shutdown()
        return quiet

    def run_now(self, requests: list[CanonicalRequest]) -> list[GeneratedImage]:
        """Generate and encode on the calling thread, which must be the engine's (for
        `warmup`); keeps no prompt embeddings."""
        assert threading.current_thread().name.startswith("zimage-engine"), "run_now off the engine thread"
        identity = self.identity_future.result()
        return finish_images(self._run(requests, identity, embedding_scope=None), requests, identity)

    def _cancelled(self, number: int, job: Future[None], result: Future[list[GeneratedImage]]) -> None:
        if job.cancelled():  # the executor shut down before it started: never unlisted in _generate
            with self._lock:
                self._queued.pop(number, None)
            result.cancel()

    def _unlist_cancelled(self, number: int, result: Future[list[GeneratedImage]]) -> None:
        if result.cancelled():  # its caller cancelled it before it started: out of the queue at once
            with self._lock:
                self._queued.pop(number, None)

    def _work_started(self) -> None:
        with self._quiet:
            self._busy += 1

    def _work_done(self) -> None:
        with self._quiet:
            self._busy -= 1
            if self._busy == 0:
                self._quiet.notify_all()

    def _prepare(self, load: bool) -> None:
        self._work_started()
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
            self._work_done()

    def _load(self, identity: ModelIdentity) -> None:
        try:
            started = time.perf_counter()
            log.info("loading %s on %s (%s)", identity.model_id, identity.device, identity.dtype)
            self._pipe, self.placement = load_pipeline(identity, self.options)
            self._apply_levers(identity)
            log.info("model loaded in %.1f s; warming up", time.perf_counter() - started)
            self.state = WARMING
            if self.warmup is not None:
                self.warmup(self, identity)
            else:  # the least that proves the model makes an image
                size = identity.min_size
                self.run_now([CanonicalRequest("warm-up", "", 0, size, size, 1, 0.0, "png")])
            if self.compiled:
                log.info("compile: %d graphs compiled by the warm-up", compiled_graphs())
            self.state = READY
            log.info("model ready in %.1f s", time.perf_counter() - started)
        except Exception as exc:
            if self.state != FAILED:
                self.error = f"{type(exc).__name__}: {exc}"
                self.state = FAILED
            log.exception("model failed to load")

    def _apply_levers(self, identity: ModelIdentity) -> None:
        """The attention backend, then compilation (compiled graphs bake the backend in)."""
        transformer = self._pipe.transformer
        heads, head_dim = model_attention_shape(transformer)
        backend = choose_backend(self.attention_backend, identity.device, transformer.dtype, heads, head_dim)
        fallback = apply_backend(transformer, backend)
        self.attention_in_use = backend
        log.info("attention: %s%s", backend, "; calls with a mask: native" if fallback else "")
        if should_compile(self.compile, identity.device):
            if self.compile_cache_dir is not None:
                use_cache_dir(self.compile_cache_dir)
            self.compiled = compile_transformer(transformer)
            log.info(
                "compile: %s; the warm-up compiles every shape",
                "transformer blocks compiled" if self.compiled else "off",
            )

    def _generate(
        self,
        number: int,
        requests: list[CanonicalRequest],
        progress: Progress | None,
        embedding_scope: str | None,
        result: Future[list[GeneratedImage]],
    ) -> None:
        with self._lock:
            self._queued.pop(number, None)
        if not result.set_running_or_notify_cancel():
            return  # its caller gave up before it started
        self._work_started()
        try:
            try:
                if self._pipe is None and self.state == LOADING:
                    self._load(self.identity_future.result())  # started with load=False
                if self.state == FAILED or self._pipe is None:
                    raise ModelUnavailable(f"the model failed: {self.error}")
                identity = self.identity_future.result()
                rendered = self._run(requests, identity, progress, embedding_scope)
            except BaseException as exc:
                result.set_exception(exc)
                return
            # Checking and encoding happen on the pool; this thread takes the next job.
            self._encoder.submit(rendered, requests, identity, result)
        finally:
            self._work_done()

    def _fail_fatally(self, exc: BaseException) -> None:
        """The device is unusable: refuse everything and let the process end."""
        self.error = f"unrecoverable device error: {type(exc).__name__}: {exc}"
        self.state = FAILED
        self.fatal = True
        self.accepting = False
        log.critical("%s; the process must restart", self.error)
        if self.on_fatal is not None:
            self.on_fatal(self.error)

    def _failure(self, exc: Exception) -> Exception:
        """The exception to raise for a model call that failed (other than out of memory)."""
        if is_fatal_device_error(exc):
            self._fail_fatally(exc)
            return ModelUnavailable(self.error)
        return GenerationFailed(f"the model failed: {type(exc).__name__}: {exc}")

    def _run(
        self,
        requests: list[CanonicalRequest],
        identity: ModelIdentity,
        progress: Progress | None = None,
        embedding_scope: str | None = None,
        *,
        retried: bool = False,
    ) -> Rendered:
        """Encode the prompt, denoise and decode, on the engine thread. Out of memory:
        a batch decodes one image at a time, then denoises in halves; a single image
        is retried once, then refused (OutOfMemory or ImageTooLarge)."""
        import torch

        request, batch = requests[0], len(requests)
        timings: dict[str, float] = {}

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
            timings["text"] = time.perf_counter() - started

            # 2. Denoise, always with explicit Turbo-style settings: the pipeline's own
            #    defaults (50 steps, CFG 5) are for the base model. One generator per
            #    image keeps each equal to itself made alone; on the CPU, so a seed's
            #    noise is the same whatever the GPU (the pipeline draws it there and
            #    moves it to the device).
            started = time.perf_counter()
            generators = [torch.Generator(device=NOISE_DEVICE).manual_seed(r.seed) for r in requests]
            latents = self._pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                height=request.height,
                width=request.width,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                generator=generators,
                output_type="latent",
                callback_on_step_end=step_done,
            ).images
            timings["inference"] = time.perf_counter() - started
        except torch.OutOfMemoryError:
            latents = None  # handled below, once the traceback no longer pins the tensors
        except Exception as exc:
            raise self._failure(exc) from exc
        if latents is None:
            return self._denoise_out_of_memory(requests, identity, progress, embedding_scope, retried)

        # 3. Decode to pixels on the CPU (checked and encoded by the pool).
        started = time.perf_counter()
        try:
            pixels = decode_latents(self._pipe, latents)
        except torch.OutOfMemoryError:
            pixels = None
        except Exception as exc:
            raise self._failure(exc) from exc
        if pixels is None:
            if batch == 1:
                return self._single_out_of_memory(requests, identity, progress, embedding_scope, retried)
            pixels = self._decode_one_at_a_time(latents, identity)
            if pixels is None:
                return self._denoise_out_of_memory(requests, identity, progress, embedding_scope, retried)
        timings["decode"] = time.perf_counter() - started
        self.fits.made(request.width, request.height)
        return Rendered(pixels=pixels, timings=timings)

    def _decode_one_at_a_time(self, latents: Any, identity: ModelIdentity) -> Any:
        """Decode a batch that ran out of memory decoding, one latent at a time, keeping
        its denoising; None if even that runs out of memory."""
        import numpy as np
        import torch

        free_device_memory(identity.device)
        log.warning("out of memory decoding a batch of %d; decoding it one image at a time", len(latents))
        try:
            return np.concatenate(
                [decode_latents(self._pipe, latents[i : i + 1]) for i in range(len(latents))]
            )
        except torch.OutOfMemoryError:
            pass
        free_device_memory(identity.device)
        return None

    def _denoise_out_of_memory(
        self,
        requests: list[CanonicalRequest],
        identity: ModelIdentity,
        progress: Progress | None,
        embedding_scope: str | None,
        retried: bool,
    ) -> Rendered:
        """Free what the failed call held, then make a batch in two halves (recursively)."""
        import numpy as np

        free_device_memory(identity.device)
        if len(requests) == 1:
            return self._single_out_of_memory(requests, identity, progress, embedding_scope, retried)
        log.warning("out of memory on a batch of %d; generating it in two halves", len(requests))
        half = len(requests) // 2
        first = self._run(requests[:half], identity, progress, embedding_scope)
        second = self._run(requests[half:], identity, progress, embedding_scope)
        timings = {k: first.timings.get(k, 0.0) + second.timings.get(k, 0.0) for k in first.timings}
        return Rendered(pixels=np.concatenate([first.pixels, second.pixels]), timings=timings)

    def _single_out_of_memory(
        self,
        requests: list[CanonicalRequest],
        identity: ModelIdentity,
        progress: Progress | None,
        embedding_scope: str | None,
        retried: bool,
    ) -> Rendered:
        """One image did not fit. No larger than one made before: memory is held
        elsewhere, a 503 (it may fit later). Larger: retried once with memory freed,
        then refused with ImageTooLarge, and so is every size as large from then on."""
        request = requests[0]
        free_device_memory(identity.device)
        if self.fits.known_to_fit(request.width, request.height):
            raise OutOfMemory(
                f"the GPU ran out of memory for a {request.width}x{request.height} image; "
                "retry shortly, or ask for a smaller size"
            )
        if not retried:
            log.warning(
                "out of memory on a %dx%d image, larger than any made here; trying once more",
                request.width,
                request.height,
            )
            return self._run(requests, identity, progress, embedding_scope, retried=True)
        error = self.fits.refuse(request.width, request.height)
        log.warning("%s; refusing images of this size or larger until restart", error.message)
        raise error

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


def decode_latents(pipe: Any, latents: Any) -> Any:
    """The pipeline's own last step (ZImagePipeline.__call__ after its denoising loop):
    latents -> VAE decode -> float pixels in [0, 1] on the CPU, batch x H x W x 3."""
    import torch

    with torch.no_grad():
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")


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
