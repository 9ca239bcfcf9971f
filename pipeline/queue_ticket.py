"""A caller's handle on the generation jobs its request started: their place in the
engine's queue, and cancelling them before they start."""

from __future__ import annotations

from concurrent.futures import Future

from pipeline.encoding import GeneratedImage


class QueueTicket:
    """What one request started (`GenerationService.generate_batch` fills it): where
    its jobs wait in the engine's queue (`GenerationService.queue_position`) and a
    way to cancel them before they start (`GenerationService.cancel`).
    Used on the event loop only."""

    def __init__(self) -> None:
        # Each engine job, with the flights (namespace, key) that wait for it.
        self.jobs: list[tuple[Future[list[GeneratedImage]], list[tuple[str, str]]]] = []
        self.cancelled = False

    def add(self, job: Future[list[GeneratedImage]], flights: list[tuple[str, str]]) -> None:
        """Record an engine job this request started, and the flights waiting for it."""
        self.jobs.append((job, flights))
