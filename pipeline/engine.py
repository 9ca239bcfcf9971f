"""The engine: owns the pipeline and runs every model call on one worker thread."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.batching import BATCH_WINDOW_S, DEFAULT_MAX_BATCH, Member, batch_key, fan_out, gather
from pipeline.compile import CompileSetting, compiled_graphs
from pipeline.controlnet import EditInput, controlnet_fingerprint, controlnet_path, load_controlnet
from pipeline.editing import EditPipes
from pipeline.embeddings import EmbeddingCache
from pipeline.encoding import EncodePool, GeneratedImage, Rendered, finish_images
from pipeline.errors import FatalDeviceError, ModelUnavailable, ShuttingDown
from pipeline.fingerprint import DigestCache
from pipeline.fit import FitRecord
from pipeline.job_queue import JobQueue
from pipeline.limits import DEFAULT_MAX_QUEUE
from pipeline.loading import DIGESTS_FILE, ModelIdentity, ModelOptions, load_pipeline, resolve_model
from pipeline.lora import LoraCatalog, LoraSet
from pipeline.lora_adapters import DEFAULT_MAX_ADAPTER_BYTES, DEFAULT_MAX_ADAPTERS, Adapters
from pipeline.placement import Placement
from pipeline.prefetch import PromptPrefetch, prefetch_by_default
from pipeline.rendering import Progress, Render, count_tokens, embedding_key, load_of
from pipeline.request import CanonicalRequest
from pipeline.speed import apply_speed_levers

log = logging.getLogger(__name__)

Warmup = Callable[["Engine", ModelIdentity], None]  # runs on the engine thread after loading


class EngineState(str, Enum):
    """Where the engine is: loading -> warming -> ready, or failed (for good) from any."""

    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"

    def __str__(self) -> str:  # the value, in logs, f-strings and JSON alike
        return self.value

    __format__ = str.__format__  # type: ignore[assignment]


class Engine:
    """The only owner of the pipeline and the device.

    Guarantees: exactly one model call runs at a time, on a dedicated worker
    thread (never on the event loop); calls run in submission order; at most
    `max_queue` jobs wait to start (QueueFull past that); a job that has not
    started can be cancelled (`cancel`), and says its place in the queue
    (`position`; pipeline.job_queue). Loading and `warmup` (by default one
    smallest, one-step image) are the first job of that thread, so generations
    submitted meanwhile wait for them; ready means an image was made.
    The worker hands decoded pixels to a small encoding pool (pipeline.encoding)
    and starts the next job while they are checked and encoded. After `close`
    every submit raises ShuttingDown. A fatal device error (pipeline.device_errors)
    marks the engine failed and calls `on_fatal` (the app ends the process, for
    Supervisor to restart it).

    Speed levers, applied after loading: `attention_backend` (pipeline.attention)
    and `compile` (pipeline.compile; its caches under `compile_cache_dir`).

    Batching across requests (pipeline.batching): a job that starts takes the waiting
    jobs of the same size, steps, guidance and padded caption lengths into its model
    call, those queued now and those submitted within BATCH_WINDOW_S of its own
    submission, up to `max_batch` images and what the memory plan allows (1: off;
    None: DEFAULT_MAX_BATCH on CUDA, 1 on the CPU, where a batch only costs the sum
    of its images' arithmetic: docs/PERFORMANCE.md).
    Each image is the one it would be alone, byte for byte (pipeline/batch_invariance.py,
    on the CPU; unmeasured on CUDA); a job taken in is running
    (it can no longer be cancelled) and gets its own result. `batch_observers` are
    told the images of every model call.

    LoRAs (pipeline/lora.py, pipeline/lora_adapters.py): `loras` lists the files a
    request may name (under `lora_dir`, and the demo LoRA with the demo model); a
    job's LoRA set is applied to the pipeline before its model call (the base
    weights are never reloaded), the adapters kept in an LRU bounded by
    `max_adapters` and `max_adapter_bytes`; only jobs with the same set share a call.

    Prompt prefetch (pipeline/prefetch.py): while the transformer denoises, the next
    waiting job's prompt is encoded into the embedding cache (`prefetch_prompts`;
    None: where the placement runs the text encoder on the CPU beside a CUDA
    transformer, the `text-encoder` mode); the job is looked at, never claimed.
    """

    def __init__(
        self,
        model_spec: str,
        models_dir: Path,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        embedding_cache_bytes: int = 256 << 20,
        warmup: Warmup | None = None,
        on_fatal: Callable[[str], None] | None = None,
        options: ModelOptions | None = None,
        attention_backend: str = "auto",
        compile: CompileSetting = "auto",
        compile_cache_dir: Path | None = None,
        max_batch: int | None = None,
        batch_window_s: float = BATCH_WINDOW_S,
        lora_dir: Path | None = None,
        max_adapters: int = DEFAULT_MAX_ADAPTERS,
        max_adapter_bytes: int = DEFAULT_MAX_ADAPTER_BYTES,
        controlnet: str | None = None,
        prefetch_prompts: bool | None = None,
    ) -> None:
        self.model_spec = model_spec
        self.models_dir = models_dir
        self.options = options or ModelOptions()
        self.placement: Placement | None = None  # known once loaded
        self.max_queue = max_queue
        self.embeddings = EmbeddingCache(embedding_cache_bytes)
        self.warmup = warmup
        self.on_fatal = on_fatal
        self.attention_backend = attention_backend
        self.compile = compile
        self.compile_cache_dir = compile_cache_dir
        self.attention_in_use: str | None = None  # the backend chosen at load
        self.compiled = False
        self.fits = FitRecord()
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.batch_observers: list[Callable[[int], None]] = []  # images per model call
        # (step, steps) of the model call running now, None between calls (A1111's progress).
        self.current_step: tuple[int, int] | None = None
        # LoRAs (pipeline/lora.py): the files a request may name; the adapters loaded.
        self.loras = LoraCatalog(lora_dir, models_dir, DigestCache(models_dir / DIGESTS_FILE))
        self.adapters = Adapters(max_adapters, max_adapter_bytes)
        self.error: str | None = None
        self.fatal = False
        self.accepting = True
        self.identity_future: Future[ModelIdentity] = Future()
        self._state = EngineState.LOADING
        self._settled = threading.Event()  # set once ready or failed
        self._pipe: Any = None
        self._edits: EditPipes | None = None  # img2img, inpainting, ControlNet over `_pipe`
        # `--controlnet` (pipeline.controlnet): its weights' path and fingerprint, known
        # with the identity (before loading: a control request's key needs it).
        self.controlnet = controlnet
        self.controlnet_fingerprint: str | None = None
        self._controlnet_path: Path | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-engine")
        self._queue = JobQueue(self._executor, max_queue)
        # Work in flight: the engine's job and the encodes it handed over.
        self._busy = 0
        self._quiet = threading.Condition()
        self._encoder = EncodePool(on_start=self._work_started, on_done=self._work_done)
        self.prefetch_prompts = prefetch_prompts  # resolved at load (None: by the placement)
        self._prefetch: PromptPrefetch | None = None
        self._counting_tokenizer: Any = None  # gather's own: the pipeline's may be encoding

    @property
    def state(self) -> EngineState:
        return self._state

    def _set_state(self, state: EngineState) -> None:
        self._state = state
        if state in (EngineState.READY, EngineState.FAILED):
            self._settled.set()

    def wait_settled(self, timeout_s: float | None = None) -> EngineState:
        """Wait until the model is ready or has failed (or `timeout_s` passes); the state then."""
        self._settled.wait(timeout_s)
        return self._state

    @property
    def identity(self) -> ModelIdentity | None:
        fut = self.identity_future
        return fut.result() if fut.done() and not fut.exception() else None

    @property
    def queue_depth(self) -> int:
        """Generation jobs submitted and not yet started."""
        return self._queue.depth

    def position(self, job: Future[list[GeneratedImage]]) -> int | None:
        """Where a job waits: 1 when it starts next, 2 after that, ...; None once it
        has started (or was cancelled)."""
        return self._queue.position(job)

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
        loras: LoraSet = (),
        image: EditInput | None = None,
    ) -> Future[list[GeneratedImage]]:
        """Queue one generation job: the images of `requests` (same prompt and settings,
        different seeds) made in one batched pipeline call, with other jobs' images
        where they can share it (batching across requests). `progress(step, steps)` is
        called from the engine thread after each denoising step. Prompt embeddings are
        looked up and kept under `embedding_scope` (the namespace); None neither looks
        them up nor keeps them (prompts that must not be kept anywhere). Raises
        QueueFull when `max_queue` jobs are already waiting to start, ImageTooLarge for
        a size at least as large as one that did not fit before. The future resolves
        once the images are encoded; cancelling it before the job starts drops the job.
        `loras` (resolved by `self.loras`) are applied to every image of the job;
        RequestInvalid("loras") from the future when one cannot be loaded.

        With `image`, the images are edits of it (pipeline.editing), never batched
        with other jobs (pipeline.batching.batch_key)."""
        if not self.accepting:
            raise ShuttingDown("the service is shutting down; retry shortly or on another replica")
        if self._state == EngineState.FAILED:
            raise ModelUnavailable(f"the model failed: {self.error}")
        first = requests[0]
        if any(r.as_dict() | {"seed": 0} != first.as_dict() | {"seed": 0} for r in requests):
            raise ValueError("a batch must share everything but the seed")
        self.fits.check(load_of(requests))
        member = Member(requests, progress, embedding_scope, image=image, loras=loras)
        group = batch_key(first, loras, image) if (self.max_batch or 1) > 1 else None
        member.result = self._queue.submit(lambda result: self._generate(member), group=group, item=member)
        return member.result

    def close(self, timeout_s: float = 0.0) -> bool:
        """Cancel the jobs that have not started and wait up to `timeout_s` for the one
        running and the images being encoded. True when nothing is left running (the
        encoding pool is then shut down too); False otherwise, which the caller may
        abandon (a job writes nothing; storing is the service's)."""
        self.accepting = False
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._quiet:
            quiet = self._quiet.wait_for(lambda: self._busy == 0, timeout_s)
        if quiet:
            self._encoder.shutdown()
        if self._prefetch is not None:
            self._prefetch.close()
        return quiet

    def run_now(self, requests: list[CanonicalRequest]) -> list[GeneratedImage]:
        """Generate and encode on the calling thread, which must be the engine's (for
        `warmup`); keeps no prompt embeddings."""
        assert threading.current_thread().name.startswith("zimage-engine"), "run_now off the engine thread"
        identity = self.identity_future.result()
        return finish_images(self._run([Member(requests, None, None)], identity), requests, identity)

    def _run(self, members: list[Member], identity: ModelIdentity) -> Rendered:
        """One model call (pipeline.rendering) for the images of `members`, on the engine
        thread; a fatal device error fails the engine for good before it is raised."""
        render = Render(
            self._pipe,
            identity,
            embeddings=self.embeddings,
            fits=self.fits,
            progress=self._recording(self._prefetching(fan_out(members))),
            image=members[0].image,  # an edit is never batched with another job
            edits=self._edits,
        )
        requests = [r for m in members for r in m.requests]
        self.adapters.apply(self._pipe, members[0].loras)  # one set per call (batch_key)
        for observe in self.batch_observers:
            observe(len(requests))
        try:
            return render(requests, [m.embedding_scope for m in members for _ in m.requests])
        except FatalDeviceError as exc:
            self._fail_fatally(str(exc))
            raise
        finally:
            self.current_step = None

    def _recording(self, progress: Progress) -> Progress:
        """`progress`, also recording each step in `current_step` (read by other threads:
        one tuple assignment, atomic)."""

        def record(step: int, steps: int) -> None:
            self.current_step = (step, steps)
            progress(step, steps)

        return record

    def _prefetching(self, progress: Progress) -> Progress:
        """`progress`, poking the prompt prefetch first at each step (once the running
        job's own embeddings are made, so a prefetch never delays them)."""
        prefetch = self._prefetch
        if prefetch is None:
            return progress

        def poke_then(step: int, steps: int) -> None:
            prefetch.poke()
            progress(step, steps)

        return poke_then

    def _start_prefetch(self, identity: ModelIdentity) -> None:
        """Turn the prompt prefetch on where `prefetch_prompts` (or, when None, the
        placement) says so and the embedding cache can keep what it makes."""
        wanted = self.prefetch_prompts
        if wanted is None:
            wanted = prefetch_by_default(self.placement)
        self.prefetch_prompts = wanted = wanted and self.embeddings.max_bytes > 0
        if not wanted:
            return
        render = Render(self._pipe, identity, embeddings=self.embeddings, fits=self.fits)

        def encode(text: str, scope: str) -> None:
            render.embed(text, "cpu", scope, prefetch=True)

        def known(text: str, scope: str) -> bool:
            return self.embeddings.known(embedding_key(identity, text, scope))

        self._prefetch = PromptPrefetch(self._queue.waiting, known, encode)
        log.info("prompt prefetch: on (the next queued prompt is encoded while the transformer works)")

    def batch_capacity(self, request: CanonicalRequest) -> int:
        """Most images of `request`'s kind one model call may gather: `max_batch`, and on
        CUDA what the memory plan's activation budget allows (at least 1)."""
        most = self.max_batch or 1
        allowed = self.placement.max_images(load_of([request])) if self.placement is not None else None
        return max(1, min(most, allowed if allowed is not None else most))

    def _gather(self, leader: Member) -> list[Member]:
        """`leader` and the waiting jobs that can share its model call (see the class)."""
        if (self.max_batch or 1) <= 1:
            return [leader]
        capacity = self.batch_capacity(leader.requests[0])
        counting = partial(count_tokens, self._counting_tokenizer)
        return gather(leader, self._queue, capacity, counting, self.batch_window_s)

    def _work_started(self) -> None:
        with self._quiet:
            self._busy += 1

    def _work_done(self) -> None:
        with self._quiet:
            self._busy -= 1
            if self._busy == 0:
                self._quiet.notify_all()

    def _fail(self, error: str) -> None:
        self.error = error
        self._set_state(EngineState.FAILED)

    def _prepare(self, load: bool) -> None:
        self._work_started()
        try:
            identity = resolve_model(self.model_spec, self.models_dir, self.options)
            if self.controlnet is not None:
                self._controlnet_path = controlnet_path(self.controlnet, self.models_dir)
                self.controlnet_fingerprint = controlnet_fingerprint(self._controlnet_path, self.models_dir)
            if self.max_batch is None:  # before any submit: the service waits for the identity
                self.max_batch = DEFAULT_MAX_BATCH if identity.device == "cuda" else 1
            self.identity_future.set_result(identity)
            if identity.demo:
                log.warning("DEMO MODEL: serving the tiny random-weight model; images are noise")
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
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
            controlnet = None
            if self._controlnet_path is not None:
                import torch

                controlnet = load_controlnet(
                    self._controlnet_path, getattr(torch, identity.dtype), identity.device
                )
            self._edits = EditPipes(self._pipe, controlnet)
            self._counting_tokenizer = copy.deepcopy(self._pipe.tokenizer)
            self._start_prefetch(identity)
            from pipeline.batch_invariance import per_row_linears  # (torch: imported once loading)

            per_row_linears(self._pipe.transformer)  # a batched image equals itself alone, bit for bit
            levers = apply_speed_levers(
                self._pipe.transformer,
                identity.device,
                attention_backend=self.attention_backend,
                compile=self.compile,
                compile_cache_dir=self.compile_cache_dir,
            )
            self.attention_in_use, self.compiled = levers.attention, levers.compiled
            log.info("model loaded in %.1f s; warming up", time.perf_counter() - started)
            self._set_state(EngineState.WARMING)
            if self.warmup is not None:
                self.warmup(self, identity)
            else:  # the least that proves the model makes an image
                size = identity.min_size
                self.run_now([CanonicalRequest("warm-up", "", 0, size, size, 1, 0.0)])
            if self.compiled:
                log.info("compile: %d graphs compiled by the warm-up", compiled_graphs())
            self._set_state(EngineState.READY)
            log.info("model ready in %.1f s", time.perf_counter() - started)
        except Exception as exc:
            if self._state != EngineState.FAILED:
                self._fail(f"{type(exc).__name__}: {exc}")
            log.exception("model failed to load")

    def _generate(self, leader: Member) -> None:
        """One job, started by the queue (its result set running), with the jobs it gathers."""
        self._work_started()
        members = [leader]
        try:
            try:
                if self._pipe is None and self._state == EngineState.LOADING:
                    self._load(self.identity_future.result())  # started with load=False
                if self._state == EngineState.FAILED or self._pipe is None:
                    raise ModelUnavailable(f"the model failed: {self.error}")
                identity = self.identity_future.result()
                members = self._gather(leader)
                rendered = self._run(members, identity)
            except BaseException as exc:
                for member in members:
                    if not member.result.done():
                        member.result.set_exception(exc)
                return
            # Checking and encoding happen on the pool; this thread takes the next job.
            start = 0
            for member in members:
                part = Rendered(rendered.pixels[start : start + member.images], rendered.timings)
                start += member.images
                if not member.detached:
                    self._encoder.submit(part, member.requests, identity, member.result, member.loras)
        finally:
            self._work_done()

    def _fail_fatally(self, error: str) -> None:
        """The device is unusable: refuse everything and let the process end."""
        self._fail(error)
        self.fatal = True
        self.accepting = False
        log.critical("%s; the process must restart", self.error)
        if self.on_fatal is not None:
            self.on_fatal(self.error)
