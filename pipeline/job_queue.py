"""The engine's queue: generation jobs submitted and not yet started, bounded and in
order, each knowing its place and cancellable until it starts."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipeline.errors import QueueFull


class JobQueue:
    """Jobs waiting for the engine's one worker thread.

    Guarantees: at most `limit` jobs wait to start (QueueFull past that); they start
    in submission order; a job leaves the queue as it starts, as soon as its caller
    cancels its result before it started (it then never runs), or when the executor
    is shut down before it started (its result is then cancelled). Thread-safe.
    """

    def __init__(self, executor: ThreadPoolExecutor, limit: int) -> None:
        self.executor = executor
        self.limit = limit
        # Jobs submitted and not yet started, in submission order (dicts keep it).
        self._waiting: dict[int, Future[Any]] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Jobs submitted and not yet started."""
        return len(self._waiting)

    def position(self, result: Future[Any]) -> int | None:
        """Where a job waits: 1 when it starts next, 2 after that, ...; None once it
        has started (or was cancelled)."""
        with self._lock:
            for place, waiting in enumerate(self._waiting.values(), 1):
                if waiting is result:
                    return place
        return None

    def submit(self, work: Callable[[Future[Any]], None]) -> Future[Any]:
        """Queue `work(result)` for the worker thread and return `result`, which `work`
        resolves (it runs only if nobody cancelled `result` before it started)."""
        with self._lock:
            if len(self._waiting) >= self.limit:
                raise QueueFull(len(self._waiting))
            number = next(self._numbers)
            result: Future[Any] = Future()
            job = self.executor.submit(self._start, number, result, work)
            # Listed under the lock the job's own start needs to unlist it, so it is
            # listed before it can start.
            self._waiting[number] = result
        job.add_done_callback(lambda job: self._dropped(number, job, result))
        result.add_done_callback(lambda result: self._unlist_cancelled(number, result))
        return result

    def _start(self, number: int, result: Future[Any], work: Callable[[Future[Any]], None]) -> None:
        with self._lock:
            self._waiting.pop(number, None)
        if result.set_running_or_notify_cancel():  # else its caller gave up before it started
            work(result)

    def _dropped(self, number: int, job: Future[None], result: Future[Any]) -> None:
        if job.cancelled():  # the executor shut down before it started: never unlisted in _start
            with self._lock:
                self._waiting.pop(number, None)
            result.cancel()

    def _unlist_cancelled(self, number: int, result: Future[Any]) -> None:
        if result.cancelled():  # its caller cancelled it before it started: out of the queue at once
            with self._lock:
                self._waiting.pop(number, None)
