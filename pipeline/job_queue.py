"""The engine's queue: generation jobs submitted and not yet started, bounded and in
order, each knowing its place and cancellable until it starts; jobs of one group can
be claimed by a running job, to be made in its model call (batching across requests)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipeline.errors import QueueFull


class JobQueue:
    """Jobs waiting for the engine's one worker thread.

    Guarantees: at most `limit` jobs wait to start (QueueFull past that); they start
    in submission order; a job leaves the queue as it starts, as soon as its caller
    cancels its result before it started (it then never runs), when the executor
    is shut down before it started (its result is then cancelled), or when a running
    job `claim`s it (its result is then running, and its own start does nothing).
    Thread-safe.
    """

    def __init__(self, executor: ThreadPoolExecutor, limit: int) -> None:
        self.executor = executor
        self.limit = limit
        # Jobs submitted and not yet started, in submission order (dicts keep it).
        self._waiting: dict[int, Future[Any]] = {}
        # What a waiting job may be claimed as: its group (None: never) and its item.
        self._claimable: dict[int, tuple[Hashable | None, Any]] = {}
        self._claimed: set[int] = set()  # taken by a running job; their own start is a no-op
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._submitted = threading.Condition(self._lock)

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

    def waiting(self) -> list[Any]:
        """The items of the jobs waiting to start, in queue order, left in the queue
        (a look: nothing is claimed)."""
        with self._lock:
            return [self._claimable[number][1] for number in self._waiting]

    def submit(
        self, work: Callable[[Future[Any]], None], *, group: Hashable | None = None, item: Any = None
    ) -> Future[Any]:
        """Queue `work(result)` for the worker thread and return `result`, which `work`
        resolves (it runs only if nobody cancelled `result` before it started, nor a
        running job claimed it: see `claim`, which hands out `item` for jobs of `group`)."""
        with self._lock:
            if len(self._waiting) >= self.limit:
                raise QueueFull(len(self._waiting))
            number = next(self._numbers)
            result: Future[Any] = Future()
            job = self.executor.submit(self._start, number, result, work)
            # Listed under the lock the job's own start needs to unlist it, so it is
            # listed before it can start.
            self._waiting[number] = result
            self._claimable[number] = (group, item)
            self._submitted.notify_all()
        job.add_done_callback(lambda job: self._dropped(number, job, result))
        result.add_done_callback(lambda result: self._unlist_cancelled(number, result))
        return result

    def claim(self, group: Hashable, accept: Callable[[Any], bool]) -> list[Any]:
        """Take the waiting jobs of `group` whose item `accept` takes (asked in queue
        order, under the queue's lock: it must be quick) out of the queue, set their
        results running, and return their items; the caller now resolves those results.
        A job cancelled meanwhile is skipped."""
        taken = []
        with self._lock:
            for number, result in list(self._waiting.items()):
                their_group, item = self._claimable[number]
                if their_group != group or not accept(item):
                    continue
                del self._waiting[number], self._claimable[number]
                if result.set_running_or_notify_cancel():
                    self._claimed.add(number)
                    taken.append(item)
        return taken

    def wait_submitted(self, deadline: float) -> None:
        """Block until a job is submitted or `deadline` (time.monotonic()) passes."""
        with self._lock:
            self._submitted.wait(max(0.0, deadline - time.monotonic()))

    def _start(self, number: int, result: Future[Any], work: Callable[[Future[Any]], None]) -> None:
        with self._lock:
            self._waiting.pop(number, None)
            self._claimable.pop(number, None)
            if number in self._claimed:  # made in an earlier job's model call
                self._claimed.discard(number)
                return
        if result.set_running_or_notify_cancel():  # else its caller gave up before it started
            work(result)

    def _dropped(self, number: int, job: Future[None], result: Future[Any]) -> None:
        if job.cancelled():  # the executor shut down before it started: never unlisted in _start
            with self._lock:
                self._waiting.pop(number, None)
                self._claimable.pop(number, None)
                self._claimed.discard(number)
            result.cancel()

    def _unlist_cancelled(self, number: int, result: Future[Any]) -> None:
        if result.cancelled():  # its caller cancelled it before it started: out of the queue at once
            with self._lock:
                self._waiting.pop(number, None)
                self._claimable.pop(number, None)
