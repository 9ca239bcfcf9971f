"""Batching across requests: which waiting jobs the engine may make in one model call.

Concurrent misses with different prompts but the same size, steps and guidance are
made together (`gather`, called by pipeline/engine.py). Each image stays the one made
alone: one CPU generator per image (as always), and only jobs whose captions the
transformer pads to the same lengths are grouped. The transformer pads each caption
to a multiple of 32 tokens, then the batch to its longest sequence with zero rows
and an attention mask when lengths differ (diffusers' `transformer_z_image.py`);
equal padded lengths give every row the attention, mask and padding it has alone.
What was left, the rounding of matrix products that depends on their number of rows
(on this CPU the latents differed by about 6e-7), is taken out by
pipeline/batch_invariance.py: a batched image is the one made alone, byte for byte
(tests/test_batching.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import JobInterrupted
from pipeline.lora import LoraSet, lora_set_key

if TYPE_CHECKING:
    from pipeline.controlnet import EditInput
    from pipeline.encoding import GeneratedImage
    from pipeline.job_queue import JobQueue
    from pipeline.rendering import Progress
    from pipeline.request import CanonicalRequest

# How long a job that starts at once waits for companions, from its submission (a job
# that waited in the queue longer takes whatever is queued, without waiting).
BATCH_WINDOW_S = 0.02
# Images one model call may gather on a device without a memory plan (the CPU).
DEFAULT_MAX_BATCH = 8
# The transformer pads each caption to a multiple of this many tokens.
CAPTION_MULTIPLE = 32

# What every job of one model call shares: the request's shape and the parts of a
# request that change the model (its LoRA set).
BatchKey = tuple[Any, ...]


def batch_key(
    request: CanonicalRequest, loras: LoraSet = (), image: EditInput | None = None
) -> BatchKey | None:
    """The coarse criterion of jobs made together: size, steps, guidance and the LoRA set
    (by content and scale: one model call runs one set of adapters). The caption
    lengths (`caption_profile`) are checked when the jobs are gathered.
    None for an edit (a job with an input image): edits are never batched across
    requests, since each call of the edit pipelines takes one image (and mask) for
    all its rows; its own images (one request's seeds) still share one model call."""
    if image is not None:
        return None
    return (request.width, request.height, request.steps, request.guidance_scale, lora_set_key(loras))


@dataclass
class Member:
    """One submitted job in a model call: its images, progress, embedding scope and result.

    `detached` is set once its result no longer follows the model call (a future
    Interrupt of one caller sets it from the step callback); the others go on."""

    requests: list[CanonicalRequest]
    progress: Progress | None
    embedding_scope: str | None
    image: EditInput | None = None  # an edit's input (pipeline.image_input): never batched
    result: Future[list[GeneratedImage]] = field(default_factory=Future)
    profile: tuple[int, ...] | None = None
    detached: bool = False
    submitted: float = field(default_factory=time.monotonic)
    loras: LoraSet = ()

    @property
    def images(self) -> int:
        return len(self.requests)


def caption_profile(count_tokens: Callable[[str], int], request: CanonicalRequest) -> tuple[int, ...]:
    """The lengths the transformer pads the caption(s) of `request` to: the prompt's, and
    the negative prompt's with guidance on."""
    texts = [request.prompt] + ([request.negative_prompt] if request.guidance_scale > 0 else [])
    return tuple(-(-count_tokens(text) // CAPTION_MULTIPLE) * CAPTION_MULTIPLE for text in texts)


def gather(
    leader: Member, queue: JobQueue, capacity: int, count_tokens: Callable[[str], int], window_s: float
) -> list[Member]:
    """`leader` and the waiting jobs of `queue` that can share its model call: the same
    `batch_key` and `caption_profile` (tokens counted by `count_tokens`), up to
    `capacity` images in all. Jobs are claimed (their results set running) in queue
    order; it waits for more until `window_s` after the leader's submission or until
    the call is full, so a leader that waited in the queue longer takes whatever is
    queued at once."""
    first = leader.requests[0]
    key = batch_key(first, leader.loras, leader.image)
    if key is None:
        return [leader]
    room = [capacity - leader.images]
    leader.profile = caption_profile(count_tokens, first)

    def accept(member: Member) -> bool:  # under the queue's lock: quick
        if member.images > room[0]:
            return False
        if member.profile is None:
            member.profile = caption_profile(count_tokens, member.requests[0])
        if member.profile != leader.profile:
            return False
        room[0] -= member.images
        return True

    members = [leader]
    deadline = leader.submitted + window_s
    while True:
        members += queue.claim(key, accept)
        if room[0] <= 0 or time.monotonic() >= deadline:
            return members
        queue.wait_submitted(deadline)


def fan_out(members: list[Member]) -> Progress:
    """One step callback for a model call that tells every member still attached.

    A member whose callback raises JobInterrupted (its caller's Interrupt,
    pipeline/queue_ticket.py) stops the model call when it is the only member still
    attached; with others it is detached instead: its result is the interruption at
    once, nothing of it is encoded or stored, and the others go on."""

    def progress(step: int, steps: int) -> None:
        for member in members:
            if member.progress is None or member.detached:
                continue
            try:
                member.progress(step, steps)
            except JobInterrupted as exc:
                if all(other is member or other.detached for other in members):
                    raise
                member.detached = True
                member.result.set_exception(exc)

    return progress
