"""Encode the next prompt while the transformer works.

While the engine's transformer denoises one job, the prompt (and, with guidance, the
negative prompt) of the next job waiting in the queue is encoded into the embedding
cache (pipeline/embeddings.py), so that job starts with its embeddings made. The job is
only looked at, never claimed: it keeps its place, can still be cancelled, and may
still be gathered into another job's model call (pipeline/batching.py). The embedding
cache's single flight makes the job wait for a prefetch in progress rather than
encode its prompt a second time.

Where it pays, and where it is safe (`prefetch_by_default`): only where the text
encoder runs on other hardware than the transformer, which is the `text-encoder`
placement (pipeline/placement.py): the encoder on the CPU, the transformer on the GPU.
There, encoding a new prompt (seconds on the CPU) overlaps the GPU's denoising
instead of following it. Everywhere else it stays off:
- `none`: both on the GPU; the memory plan counts one of them working at a time (the
  encoder's activations beside the transformer's are outside it), and the kernels of
  the two would share one GPU anyway.
- `stream-text-encoder`, `model`, `sequential`: the encoder's weights stream through
  the GPU on hooks shared with the transformer's call; a second stream of copies
  during the denoise is outside the plan, and the offload hooks are not thread-safe.
- the CPU (no GPU): both compete for the same cores, so the overlap saves nothing;
  the tests turn it on there to prove the ordering and the single flight.
A prompt that must not be kept anywhere (no embedding scope) is never prefetched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.batching import Member
    from pipeline.placement import Placement

log = logging.getLogger(__name__)

# What the prefetch needs of the engine: the waiting jobs in queue order; whether a
# (text, scope) is kept or being encoded; encoding one into the cache.
Peek = Callable[[], "list[Member]"]
Known = Callable[[str, str], bool]
Encode = Callable[[str, str], None]


def prefetch_by_default(placement: Placement | None) -> bool:
    """Whether the engine prefetches prompts when not told: with the text encoder on
    the CPU beside a transformer on CUDA (see the module's docstring for why not elsewhere)."""
    return placement is not None and placement.mode == "text-encoder" and placement.device == "cuda"


def texts_of(member: Member) -> list[tuple[str, str]]:
    """The (text, scope) pairs a job's model call encodes; none without a scope."""
    scope = member.embedding_scope
    if scope is None:
        return []
    pairs = []
    for request in member.requests:
        pairs.append((request.prompt, scope))
        if request.guidance_scale > 0:
            pairs.append((request.negative_prompt, scope))
    return list(dict.fromkeys(pairs))


class PromptPrefetch:
    """Encodes the texts of the first waiting job that has any not yet encoded, on a
    thread of its own, when `poke`d (the engine pokes after each denoising step, once
    the running job's own embeddings are made, so a prefetch never delays them).

    Guarantees: at most one prefetch runs at a time (a poke while one runs does
    nothing: the next step's poke catches up); a failed encoding is logged and
    dropped (the job then encodes its prompt itself and reports the error); `close`
    stops taking pokes."""

    def __init__(self, peek: Peek, known: Known, encode: Encode) -> None:
        self._peek, self._known, self._encode = peek, known, encode
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-prefetch")
        self._lock = threading.Lock()
        self._running = False
        self._closed = False

    def poke(self) -> None:
        """Start a prefetch if none runs and there is a waiting job to prefetch."""
        with self._lock:
            if self._running or self._closed:
                return
            self._running = True
        try:
            self._executor.submit(self._prefetch)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._running = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _prefetch(self) -> None:
        try:
            for member in self._peek():
                todo = [(text, scope) for text, scope in texts_of(member) if not self._known(text, scope)]
                if member.result.cancelled() or not todo:
                    continue
                for text, scope in todo:
                    if member.result.cancelled():  # its caller left meanwhile: stop here
                        return
                    self._encode(text, scope)
                return
        except Exception:
            log.exception("prefetching a prompt failed; its job will encode it")
        finally:
            with self._lock:
                self._running = False
