"""Single flight: concurrent requests for one entry share one generation, in this
process always and across replicas through a lock per entry (the Redis tier's)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cache import MISS, Hit, LayeredCache, TierUnavailable
from pipeline.errors import ShuttingDown
from pipeline.request import CanonicalRequest
from pipeline.results import Outcome

log = logging.getLogger(__name__)

# How a replica waiting for another's generation polls the shared cache.
POLL_START_S, POLL_MAX_S = 0.02, 0.5
# A replica stops waiting for another after this and generates itself.
WAIT_LIMIT_S = 600.0
# What waiting for another replica ends in when nobody waits for the result any more.
_ABANDONED = object()

# Makes and stores the entries of these keys (key -> request), returning their outcomes.
Produce = Callable[[dict[str, CanonicalRequest]], Awaitable[dict[str, Outcome]]]


class Lease(Protocol):
    refresh_every_s: float

    def refresh(self) -> bool: ...
    def release(self) -> None: ...


class FlightLocks(Protocol):
    """Cross-replica single flight: one lock per entry (the Redis tier provides it)."""

    def try_lock(self, namespace: str, key: str) -> Lease | None:
        """A lease on the entry's lock, or None while another replica holds it."""

    def lock_held(self, namespace: str, key: str) -> bool: ...


class SingleFlight:
    """One production per entry at a time.

    Guarantees: callers asking for an entry already being made here join that
    flight; the rest of a call's keys are made in one `produce` call, which runs to
    the end and stores even if every caller leaves (callers wait on a shield).
    With `locks`, a key another replica holds the lock of is waited for by polling
    the cache, with back-off, until it appears, its lock goes (then it goes round
    again), `replica_wait_s` passes (then it is made here), or no caller waits for
    it any more (then the wait ends at once). If the locks' store is down, each
    replica makes what it needs. Used on one event loop.
    """

    def __init__(
        self, cache: LayeredCache, locks: FlightLocks | None = None, *, replica_wait_s: float = WAIT_LIMIT_S
    ) -> None:
        self.cache = cache
        self.locks = locks
        self.replica_wait_s = replica_wait_s
        self._flights: dict[tuple[str, str], asyncio.Future[Outcome]] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._waiters: Counter[tuple[str, str]] = Counter()  # callers awaiting each flight

    async def run(
        self,
        namespace: str,
        missed: dict[str, CanonicalRequest],
        produce: Produce,
        landed: Callable[[str], None] | None = None,
    ) -> dict[str, Outcome]:
        """The outcome of every key of `missed`: by joining the flight of a key already
        under way here, or from one new fill for the others. `landed(key)` is called as
        each key's flight ends (so each image of a batch can carry its own time)."""
        waits: dict[str, asyncio.Future[Outcome]] = {}
        new: dict[str, CanonicalRequest] = {}
        for key, canonical in missed.items():
            flight = self._flights.get((namespace, key))
            if flight is None:
                flight = asyncio.get_running_loop().create_future()
                flight.add_done_callback(_consume_exception)
                self._flights[(namespace, key)] = flight
                new[key] = canonical
            waits[key] = flight
            if landed is not None:
                flight.add_done_callback(lambda _, key=key: landed(key))
        # Counting the waiters lets a wait for another replica end once all have left
        # (and tells `waiting` whether anyone else waits for an entry).
        waiting = [(namespace, key) for key in waits]
        self._waiters.update(waiting)
        try:
            if new:
                fill = asyncio.ensure_future(self._fill(namespace, new, produce))
                self._fills.add(fill)
                fill.add_done_callback(self._fills.discard)
            return {key: await asyncio.shield(flight) for key, flight in waits.items()}
        finally:
            self._waiters.subtract(waiting)
            for name in waiting:
                if self._waiters[name] <= 0:
                    del self._waiters[name]

    def waiting(self, namespace: str, key: str) -> int:
        """How many callers await the entry's flight now."""
        return self._waiters[(namespace, key)]

    def unlist(self, namespace: str, key: str) -> None:
        """Forget the entry's flight (its generation was cancelled), so that a caller
        asking for it from now on starts a flight of its own instead of joining one
        that will not come."""
        self._flights.pop((namespace, key), None)

    async def _fill(self, namespace: str, items: dict[str, CanonicalRequest], produce: Produce) -> None:
        """Produce the entries of missed keys and resolve their flights."""
        flights = {key: self._flights[(namespace, key)] for key in items}
        try:
            outcomes = await self._make(namespace, items, produce)
            for key, flight in flights.items():
                if key in outcomes:
                    flight.set_result(outcomes[key])
                else:  # abandoned while waiting for another replica: nobody awaits it
                    flight.cancel()
        except BaseException as exc:
            for flight in flights.values():
                if not flight.done():
                    flight.set_exception(
                        exc
                        if isinstance(exc, Exception)
                        else ShuttingDown("the generation was cancelled: the service is shutting down")
                    )
            if not isinstance(exc, Exception):
                raise
        finally:
            for key, flight in flights.items():
                if self._flights.get((namespace, key)) is flight:
                    del self._flights[(namespace, key)]

    async def _make(
        self, namespace: str, items: dict[str, CanonicalRequest], produce: Produce
    ) -> dict[str, Outcome]:
        """Outcomes of the keys in `items`, leaving out those whose callers all left
        while another replica was making them."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.replica_wait_s
        done: dict[str, Outcome] = {}
        pending = dict(items)
        while pending:
            # 1. Take the cross-replica lock of each key we can; the rest are another's.
            #    Past the deadline nobody is waited for any more: make them here.
            mine: dict[str, tuple[CanonicalRequest, Lease | None]] = {}
            theirs: dict[str, CanonicalRequest] = {}
            for key, canonical in pending.items():
                lease = None
                if self.locks is not None and time.monotonic() < deadline:
                    try:
                        lease = await asyncio.to_thread(self.locks.try_lock, namespace, key)
                    except TierUnavailable:
                        lease = None  # Redis is down: generating here beats not answering
                    else:
                        if lease is None:
                            theirs[key] = canonical
                            continue
                mine[key] = (canonical, lease)

            # 2. Make ours (one batch) and store them before the locks go.
            if mine:
                done.update(await self._make_locked(namespace, mine, produce))

            # 3. Wait for the other replicas' results; a key whose holder let go
            #    without storing, or that took past the deadline, goes round again.
            waited = await asyncio.gather(
                *(self._await_other_replica(namespace, key, deadline) for key in theirs)
            )
            pending = {}
            for (key, canonical), hit in zip(theirs.items(), waited, strict=True):
                if isinstance(hit, Hit):
                    done[key] = (hit.tier, hit.entry, {"wait": time.perf_counter() - started})
                elif hit is not _ABANDONED:
                    pending[key] = canonical
        return done

    async def _make_locked(
        self, namespace: str, mine: dict[str, tuple[CanonicalRequest, Lease | None]], produce: Produce
    ) -> dict[str, Outcome]:
        """`produce` the keys we hold (or need no) locks for, keeping the leases alive
        meanwhile and releasing them once stored."""
        leases = [lease for _, lease in mine.values() if lease is not None]
        keepalive = [asyncio.ensure_future(_keep_alive(lease)) for lease in leases]
        try:
            # The previous holder of a lock may have stored the entry before we took it.
            done: dict[str, Outcome] = {}
            if leases:
                found = await self.cache.aget_many(namespace, list(mine))
                done = {
                    k: (h.tier, h.entry, {}) for k, h in zip(mine, found, strict=True) if isinstance(h, Hit)
                }
            todo = {k: c for k, (c, _) in mine.items() if k not in done}
            if todo:
                done.update(await produce(todo))
            return done
        finally:
            for task in keepalive:
                task.cancel()
            for lease in leases:
                await asyncio.to_thread(lease.release)

    async def _await_other_replica(self, namespace: str, key: str, deadline: float) -> Hit | Any:
        """Poll, with back-off, until the entry appears (Hit), its lock is gone or the
        deadline passes (MISS), or no caller waits for it any more (_ABANDONED)."""
        assert self.locks is not None
        delay = POLL_START_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "waited %.0f s for another replica's image; generating it here", self.replica_wait_s
                )
                return MISS
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, POLL_MAX_S)
            if not self._waiters[(namespace, key)]:
                # Unlisted at once, in this step, so that no new caller joins a
                # flight that is about to end without a result: it starts its own.
                self._flights.pop((namespace, key), None)
                log.info("stopped waiting for another replica's image: its callers left")
                return _ABANDONED
            hit = await self.cache.aget(namespace, key)
            if isinstance(hit, Hit):
                return hit
            try:
                held = await asyncio.to_thread(self.locks.lock_held, namespace, key)
            except TierUnavailable:
                return MISS
            if not held:
                # Stored and released between our two looks, or abandoned.
                return await self.cache.aget(namespace, key)


async def _keep_alive(lease: Lease) -> None:
    while True:
        await asyncio.sleep(lease.refresh_every_s)
        if not await asyncio.to_thread(lease.refresh):
            log.warning("lost a generation lock; another replica may generate the same image")
            return


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # Every waiter gets the exception; this keeps asyncio from reporting it as
    # never retrieved when no waiter was left.
    if not future.cancelled():
        future.exception()
