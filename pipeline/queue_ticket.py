"""A caller's handle on the generation jobs its request started: their place in the
engine's queue, cancelling them before they start, and interrupting them while
they run."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from pipeline.encoding import GeneratedImage
from pipeline.errors import JobInterrupted
from pipeline.rendering import Progress


class QueueTicket:
    """What one request started (`GenerationService.generate_batch` fills it): where
    its jobs wait in the engine's queue (`GenerationService.queue_position`) and a
    way to cancel them before they start (`GenerationService.cancel`) or to stop
    them after the denoising step under way (`GenerationService.interrupt`).
    Used on the event loop, except `stepping`'s callback (the engine's thread)."""

    def __init__(self) -> None:
        # Each engine job, with the flights (namespace, key) that wait for it.
        self.jobs: list[tuple[Future[list[GeneratedImage]], list[tuple[str, str]]]] = []
        self.cancelled = False
        # Set by GenerationService.interrupt: whether the jobs must stop at their next
        # step; read on the engine's thread, where nobody else waiting (`shared`) is
        # checked again, so that a caller who joined since still gets the image.
        self.interrupted = False
        self.shared: Callable[[], bool] = lambda: False

    def stepping(self, progress: Progress | None) -> Progress:
        """The engine's step callback for this ticket's jobs: `progress`, unless they are
        interrupted and still nobody else's, when JobInterrupted ends the model call."""

        def on_step(done: int, total: int) -> None:
            if self.interrupted and not self.shared():
                raise JobInterrupted(done, total)
            if progress is not None:
                progress(done, total)

        return on_step

    def add(self, job: Future[list[GeneratedImage]], flights: list[tuple[str, str]]) -> None:
        """Record an engine job this request started, and the flights waiting for it."""
        self.jobs.append((job, flights))
