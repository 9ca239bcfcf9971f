"""One model call: prompt embeddings -> denoising -> decoded pixels, and what to do
when the device runs out of memory on the way.

Runs on the engine's thread only (pipeline/engine.py). Reads top to bottom in the
pipeline's own numbered steps; checking and encoding the pixels happen after it,
off the engine thread (pipeline/encoding.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.device_errors import free_device_memory, model_call_failure
from pipeline.editing import EditPipes, edit_arguments, steps_run
from pipeline.embeddings import MAX_SEQUENCE_LENGTH, EmbeddingCache, EmbeddingKey
from pipeline.encoding import Rendered
from pipeline.errors import JobInterrupted, OutOfMemory
from pipeline.fit import FitRecord, Load
from pipeline.loading import NOISE_DEVICE, ModelIdentity
from pipeline.placement import text_encoder_device

if TYPE_CHECKING:
    from pipeline.controlnet import EditInput
    from pipeline.request import CanonicalRequest

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (denoising steps done, steps in all)

# One text encoding at a time in the process: the engine's own and the prompt
# prefetch's (pipeline/prefetch.py) share the pipeline's tokenizer, which is not safe
# to call from two threads at once (a fast tokenizer's truncation settings are
# mutable state: "Already borrowed"), and a second encoder pass would only halve the
# speed of each.
_ENCODING = threading.Lock()


class Render:
    """Renders batches of one size, steps and guidance (prompts may differ) with `pipe`
    for `identity`.

    Guarantees: always the Turbo-style explicit settings (the pipeline's own
    defaults, 50 steps and CFG 5, are for the base model); one CPU generator per
    image, so an image in a batch equals itself made alone and a seed's noise is
    the same on every machine. Failures: out of memory is recovered from where it
    can be (a batch decodes one image at a time, then denoises in halves; a single
    image is retried once), else OutOfMemory (503: memory is held elsewhere) or
    ImageTooLarge (422: this size never fits here); any other failure is
    FatalDeviceError (the device is gone) or GenerationFailed.

    With `image` (pipeline.image_input), every image of the call is an edit of it
    (img2img or inpainting), made by `edits`' pipeline of that kind.
    """

    def __init__(
        self,
        pipe: Any,
        identity: ModelIdentity,
        *,
        embeddings: EmbeddingCache,
        fits: FitRecord,
        progress: Progress | None = None,
        embedding_scope: str | None = None,
        image: EditInput | None = None,
        edits: EditPipes | None = None,
    ) -> None:
        self.pipe = pipe
        self.image = image
        self.edits = edits
        self.identity = identity
        self.embeddings = embeddings
        self.fits = fits
        self.progress = progress
        self.embedding_scope = embedding_scope

    def __call__(
        self,
        requests: list[CanonicalRequest],
        scopes: list[str | None] | None = None,
        *,
        retried: bool = False,
    ) -> Rendered:
        """Images of `requests`, request i's prompt embeddings kept under `scopes[i]`
        (default: the render's `embedding_scope` for all)."""
        import torch

        request, batch = requests[0], len(requests)
        scopes = scopes or [self.embedding_scope] * batch
        timings: dict[str, float] = {}
        pipe, extra, steps = self.pipe, {}, request.steps
        if self.image is not None:
            # An edit: its pipeline (sharing the model's modules), its image (and mask) at
            # the request's size, and only the steps its strength runs.
            assert self.edits is not None, "an edit needs the engine's edit pipelines"
            pipe = self.edits.for_input(self.image)
            extra = edit_arguments(self.image, request.width, request.height)
            steps = steps_run(request.steps, self.image.strength)

        def step_done(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if self.progress is not None:
                self.progress(step + 1, steps)
            return {}

        try:
            # 1. Encode the prompt(s), or reuse the encoder's earlier output.
            started = time.perf_counter()
            device = torch.device(self.identity.device)
            known: dict[tuple[str, str | None], list[Any]] = {}  # a prompt once per call

            def embed(text: str, scope: str | None) -> Any:
                if (text, scope) not in known:
                    known[text, scope] = self.embed(text, device, scope)
                return known[text, scope][0]

            prompt_embeds = [embed(r.prompt, s) for r, s in zip(requests, scopes, strict=True)]
            negative_embeds = None
            if request.guidance_scale > 0:
                negative_embeds = [embed(r.negative_prompt, s) for r, s in zip(requests, scopes, strict=True)]
            timings["text"] = time.perf_counter() - started

            # 2. Denoise, always with explicit Turbo-style settings. One generator per
            #    image keeps each equal to itself made alone; on the CPU, so a seed's
            #    noise is the same whatever the GPU (the pipeline draws it there and
            #    moves it to the device).
            started = time.perf_counter()
            generators = [torch.Generator(device=NOISE_DEVICE).manual_seed(r.seed) for r in requests]
            latents = pipe(
                **extra,
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
        except JobInterrupted:
            raise  # its caller stopped it at a step (pipeline/queue_ticket.py): no failure
        except Exception as exc:
            raise model_call_failure(exc) from exc
        if latents is None:
            return self._denoise_out_of_memory(requests, scopes, retried)

        # 3. Decode to pixels on the CPU (checked and encoded by the pool).
        started = time.perf_counter()
        try:
            pixels = decode_latents(self.pipe, latents)
        except torch.OutOfMemoryError:
            pixels = None
        except Exception as exc:
            raise model_call_failure(exc) from exc
        if pixels is None:
            if batch == 1:
                return self._single_out_of_memory(requests, scopes, retried)
            pixels = self._decode_one_at_a_time(latents)
            if pixels is None:
                return self._denoise_out_of_memory(requests, scopes, retried)
        timings["decode"] = time.perf_counter() - started
        self.fits.made(load_of(requests))
        return Rendered(pixels=pixels, timings=timings)

    def embed(self, text: str, device: Any, scope: str | None, *, prefetch: bool = False) -> list[Any]:
        """The text encoder's output for `text` on `device`, from the cache of the
        embedding `scope` when there is one; with none, encoded and kept nowhere.
        `prefetch`: encoded ahead of its job (pipeline/prefetch.py), counted as such."""

        def encode() -> list[Any]:
            import torch

            # encode_prompt is not under no_grad (only the pipeline's __call__ is):
            # without it each cached embedding would keep the text encoder's whole
            # autograd graph alive, megabytes the cache's byte count never sees.
            # Only the real tokens are encoded: encode_prompt pads to its
            # max_sequence_length, and with right padding and causal attention the pad
            # tokens change nothing for the real ones (tests/test_engine.py), so padding
            # to 512 only multiplied the encoder's work (a 40-token prompt: 13x).
            with _ENCODING, torch.no_grad():
                embeds, _ = self.pipe.encode_prompt(
                    prompt=text,
                    device=text_encoder_device(self.pipe),  # the CPU in text-encoder mode
                    do_classifier_free_guidance=False,
                    max_sequence_length=count_tokens(self.pipe.tokenizer, text),
                )
            # In the model's dtype: a float32 encoder (a CPU without native bfloat16)
            # feeds a bfloat16 transformer.
            return [t.detach().to("cpu", getattr(torch, self.identity.dtype)) for t in embeds]

        if scope is None:
            self.embeddings.count_miss()
            return [t.to(device) for t in encode()]
        key = embedding_key(self.identity, text, scope)
        return [t.to(device) for t in self.embeddings.get_or_encode(key, encode, prefetch=prefetch)]

    def _decode_one_at_a_time(self, latents: Any) -> Any:
        """Decode a batch that ran out of memory decoding, one latent at a time, keeping
        its denoising; None if even that runs out of memory."""
        import numpy as np
        import torch

        free_device_memory(self.identity.device)
        log.warning("out of memory decoding a batch of %d; decoding it one image at a time", len(latents))
        try:
            return np.concatenate(
                [decode_latents(self.pipe, latents[i : i + 1]) for i in range(len(latents))]
            )
        except torch.OutOfMemoryError:
            pass
        free_device_memory(self.identity.device)
        return None

    def _denoise_out_of_memory(
        self, requests: list[CanonicalRequest], scopes: list[str | None], retried: bool
    ) -> Rendered:
        """Free what the failed call held, then make a batch in two halves (recursively)."""
        import numpy as np

        free_device_memory(self.identity.device)
        if len(requests) == 1:
            return self._single_out_of_memory(requests, scopes, retried)
        log.warning("out of memory on a batch of %d; generating it in two halves", len(requests))
        half = len(requests) // 2
        first, second = self(requests[:half], scopes[:half]), self(requests[half:], scopes[half:])
        timings = {k: first.timings.get(k, 0.0) + second.timings.get(k, 0.0) for k in first.timings}
        return Rendered(pixels=np.concatenate([first.pixels, second.pixels]), timings=timings)

    def _single_out_of_memory(
        self, requests: list[CanonicalRequest], scopes: list[str | None], retried: bool
    ) -> Rendered:
        """One image did not fit. No heavier than a load made before (pixels x images,
        doubled by guidance: pipeline.fit): memory is held elsewhere, a 503 (it may fit
        later). Heavier: retried once with memory freed, then refused with ImageTooLarge,
        and so is every image as heavy from then on."""
        load = load_of(requests)
        free_device_memory(self.identity.device)
        if self.fits.known_to_fit(load):
            raise OutOfMemory(
                f"the GPU ran out of memory for a {load.describe()} image; retry shortly, or ask for a smaller size"
            )
        if not retried:
            log.warning(
                "out of memory on a %s image, larger than any made here; trying once more", load.describe()
            )
            return self(requests, scopes, retried=True)
        error = self.fits.refuse(load)
        log.warning("%s; refusing images as heavy or heavier until restart", error.message)
        raise error


def embedding_key(identity: ModelIdentity, text: str, scope: str) -> EmbeddingKey:
    """Where the embedding cache keeps the encoder's output for `text` in `scope`."""
    return (scope, text, MAX_SEQUENCE_LENGTH, identity.fingerprint, identity.dtype)


def count_tokens(tokenizer: Any, text: str) -> int:
    """How many tokens the pipeline's encode_prompt keeps of `text` (its chat template,
    truncated to MAX_SEQUENCE_LENGTH) with the pipeline's `tokenizer`: the caption's
    length before the transformer pads it. A tokenizer serves one thread at a time."""
    messages = [{"role": "user", "content": text}]
    chat = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    return len(tokenizer(chat, truncation=True, max_length=MAX_SEQUENCE_LENGTH).input_ids)


def load_of(requests: list[CanonicalRequest]) -> Load:
    """What a model call of `requests` (one size and guidance) weighs in the memory plan."""
    first = requests[0]
    return Load(first.width, first.height, len(requests), first.guidance_scale > 0)


def decode_latents(pipe: Any, latents: Any) -> Any:
    """The pipeline's own last step (ZImagePipeline.__call__ after its denoising loop):
    latents -> VAE decode -> float pixels in [0, 1] on the CPU, batch x H x W x 3."""
    import torch

    with torch.no_grad():
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")
