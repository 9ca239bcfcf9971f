"""The one generation path: canonical request -> key -> cache -> engine -> cache -> result.

The UI, every HTTP route and prewarm call `GenerationService.generate` (or its
batch form); there is no second way to produce or look up an image.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cache import MISS, Entry, Hit, LayeredCache, TierUnavailable, is_namespace, make_key
from pipeline.engine import Engine, GeneratedImage, ModelUnavailable, Progress, ShuttingDown
from pipeline.loading import ModelIdentity
from pipeline.request import (
    MAX_SEED,
    CanonicalRequest,
    GenerationRequest,
    Normalization,
    RequestInvalid,
    check_size,
)

log = logging.getLogger(__name__)

MISS_TIER, BYPASS_TIER = "miss", "bypass"
# How a replica waiting for another's generation polls the shared cache.
POLL_START_S, POLL_MAX_S = 0.02, 0.5
# A replica stops waiting for another after this and generates itself.
WAIT_LIMIT_S = 600.0
# What waiting for another replica ends in when nobody waits for the result any more.
_ABANDONED = object()
# Recent durations kept for the p50/p95 in stats.
LATENCY_WINDOW = 1000

Outcome = tuple[str, Entry, dict[str, float]]  # tier, entry, timings


class Lease(Protocol):
    refresh_every_s: float

    def refresh(self) -> bool: ...
    def release(self) -> None: ...


class FlightLocks(Protocol):
    """Cross-replica single flight: one lock per entry (the Redis tier provides it)."""

    def try_lock(self, namespace: str, key: str) -> Lease | None:
        """A lease on the entry's lock, or None while another replica holds it."""

    def lock_held(self, namespace: str, key: str) -> bool: ...


@dataclass(frozen=True)
class GenerationResult:
    """What a caller gets back for one image: the stored bytes and where they came from."""

    key: str
    cache: str  # memory | disk | redis | miss | bypass
    entry: Entry
    request: CanonicalRequest
    # Seconds from the call until this image was there: its lookup for a hit, until
    # it was generated and stored for a miss (in a batch, each image its own).
    duration: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.request.seed


class JobCancelled(Exception):
    """The caller cancelled its generation before the model started on it: nothing
    was generated, and nothing is stored."""


class QueueTicket:
    """A caller's handle on the generation jobs its request started (`generate_batch`
    fills it): where they wait in the engine's queue (`GenerationService.queue_position`)
    and a way to cancel them before they start (`GenerationService.cancel`).
    Used on the event loop only."""

    def __init__(self) -> None:
        # Each engine job, with the flights (namespace, key) that wait for it.
        self.jobs: list[tuple[Future[list[GeneratedImage]], list[tuple[str, str]]]] = []
        self.cancelled = False


class GenerationService:
    """Looks up the cache, else generates (once per key at a time), then stores.

    Guarantees: a hit never waits behind a generation (lookups run on the event
    loop or threads, the model on the engine's); concurrent identical requests share one
    generation — in this process always, across replicas when `locks` is given
    (a Redis lock; if Redis is down each replica generates for itself); that
    generation finishes and is stored even if every caller gives up waiting.
    Waiting for another replica's generation is bounded by `replica_wait_s`
    (then this replica generates itself) and ends as soon as no caller waits for
    the result. `no_cache`, and prompts matching `no_store_patterns`, neither read
    nor write the cache, the prompt-embedding cache included. Observers see every
    result (for metrics).
    """

    def __init__(
        self,
        engine: Engine,
        cache: LayeredCache,
        *,
        locks: FlightLocks | None = None,
        normalization: Normalization = "basic",
        no_store_patterns: Iterable[re.Pattern[str]] = (),
        model_wait_s: float = 600.0,
        replica_wait_s: float = WAIT_LIMIT_S,
        log_prompts: bool = False,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.locks = locks
        self.normalization = normalization
        self.no_store_patterns = list(no_store_patterns)
        self.model_wait_s = model_wait_s
        self.replica_wait_s = replica_wait_s
        self.log_prompts = log_prompts
        self.observers: list[Callable[[GenerationResult], None]] = []
        self._flights: dict[tuple[str, str], asyncio.Future[Outcome]] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._waiters: Counter[tuple[str, str]] = Counter()  # callers awaiting each flight
        self._counts: Counter[str] = Counter()
        self._latency = {"generation": deque(maxlen=LATENCY_WINDOW), "hit": deque(maxlen=LATENCY_WINDOW)}
        self._lock = threading.Lock()

    async def generate(
        self,
        request: GenerationRequest,
        *,
        namespace: str = "public",
        no_cache: bool = False,
        normalization: Normalization | None = None,
        progress: Progress | None = None,
        ticket: QueueTicket | None = None,
    ) -> GenerationResult:
        """One image: a hit from the fastest tier that has it, else a generation."""
        results = await self.generate_batch(
            request,
            1,
            namespace=namespace,
            no_cache=no_cache,
            normalization=normalization,
            progress=progress,
            ticket=ticket,
        )
        return results[0]

    async def generate_batch(
        self,
        request: GenerationRequest,
        batch_size: int,
        *,
        namespace: str = "public",
        no_cache: bool = False,
        normalization: Normalization | None = None,
        progress: Progress | None = None,
        ticket: QueueTicket | None = None,
    ) -> list[GenerationResult]:
        """`batch_size` images of one prompt, image i with seed `seed + i` (each drawn when
        the seed is -1). Each is looked up on its own; the misses are generated together.
        `ticket`, when given, is told the engine jobs this call starts (see `cancel`);
        JobCancelled when they were cancelled before they started."""
        started = time.perf_counter()
        self._count("requests", batch_size)

        # 1. Validate what depends on the served model, and canonicalise.
        if not is_namespace(namespace):
            raise RequestInvalid("namespace", f"namespace {namespace!r} must be 1-64 of a-z, 0-9, _ and -")
        identity = await self.model_identity()
        base = request.canonical(normalization or self.normalization)
        check_size("width", base.width, identity.min_size, identity.max_size)
        check_size("height", base.height, identity.min_size, identity.max_size)
        if request.seed == -1:
            seeds = [base.seed] + [secrets.randbelow(MAX_SEED + 1) for _ in range(batch_size - 1)]
        else:
            seeds = [(base.seed + i) % (MAX_SEED + 1) for i in range(batch_size)]
        canonicals = [replace(base, seed=seed) for seed in seeds]
        keys = [self.key_for(c, identity) for c in canonicals]

        # 2. Bypass (asked for, or a do-not-cache prompt): generate, store nothing.
        if no_cache or self.must_not_store(base):
            generated = await self._generate(canonicals, progress, embedding_scope=None, ticket=ticket)
            took = [time.perf_counter() - started] * batch_size
            return self._results(keys, canonicals, [(BYPASS_TIER, e, t) for e, t in generated], took)

        # 3. Look up the tiers, fastest first, on the event loop: memory and Redis
        #    (redis.asyncio) take no thread hop, the disk only to read a file it has.
        hits = [await self.cache.aget(namespace, k) for k in keys]
        lookup = time.perf_counter() - started
        outcomes: dict[int, Outcome] = {
            i: (hit.tier, hit.entry, {"lookup": lookup}) for i, hit in enumerate(hits) if isinstance(hit, Hit)
        }
        # Each image's own time: a hit's is its lookup (in a batch with misses too,
        # the misses' generation is not the hits' time); a miss's, until its flight lands.
        took = dict.fromkeys(outcomes, lookup)

        # 4. Misses: join the fills of these keys already under way here, or start one
        #    for the rest, which generates them in one batch.
        waits: dict[int, asyncio.Future[Outcome]] = {}
        new: dict[str, CanonicalRequest] = {}
        for i, key in enumerate(keys):
            if i in outcomes:
                continue
            flight = self._flights.get((namespace, key))
            if flight is None:
                flight = asyncio.get_running_loop().create_future()
                flight.add_done_callback(_consume_exception)
                self._flights[(namespace, key)] = flight
                new[key] = canonicals[i]
            waits[i] = flight
            flight.add_done_callback(lambda _, i=i: took.setdefault(i, time.perf_counter() - started))
        #    Counting the waiters lets a wait for another replica end once all have left
        #    (and tells `cancel` whether anyone else waits for a job).
        waiting = [(namespace, keys[i]) for i in waits]
        self._waiters.update(waiting)
        try:
            if new:
                fill = asyncio.ensure_future(self._fill(namespace, new, progress, ticket))
                self._fills.add(fill)
                fill.add_done_callback(self._fills.discard)
            for i, flight in waits.items():
                outcomes[i] = await asyncio.shield(flight)
        finally:
            self._waiters.subtract(waiting)
            for name in waiting:
                if self._waiters[name] <= 0:
                    del self._waiters[name]

        return self._results(
            keys, canonicals, [outcomes[i] for i in range(batch_size)], [took[i] for i in range(batch_size)]
        )

    def queue_position(self, ticket: QueueTicket) -> int | None:
        """The best place in the engine's queue of the jobs `ticket` started (1: next to
        run); None when none waits (running, done, or none started)."""
        places = [self.engine.position(job) for job, _ in ticket.jobs]
        return min((p for p in places if p is not None), default=None)

    def cancel(self, ticket: QueueTicket) -> bool:
        """Cancel the jobs `ticket` started that have not started and that nobody else
        waits for (single flight: another caller asking for the same image shares the
        job, and gets it). True when a job was cancelled: its caller then gets
        JobCancelled. A running job always finishes and is stored. Call it on the
        event loop (which makes checking the waiters and cancelling one step)."""
        cancelled = False
        for job, flights in ticket.jobs:
            if any(self._waiters[name] > 1 for name in flights):
                continue  # someone else waits for this image too
            ticket.cancelled = True
            if self.engine.cancel(job):
                cancelled = True
                # Unlisted now, so that a caller asking for the same image from here on
                # starts a generation of its own instead of joining one that will not come.
                for name in flights:
                    self._flights.pop(name, None)
        return cancelled

    async def lookup(self, namespace: str, key: str) -> Hit | Any:
        """A stored entry by key (for `/images/{key}`), or MISS."""
        if not is_namespace(namespace):
            return MISS
        return await self.cache.aget(namespace, key)

    async def model_identity(self) -> ModelIdentity:
        """The served model's identity; waits (bounded) while it is being resolved."""
        future = self.engine.identity_future
        if future.done() and future.exception() is None:
            return future.result()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.engine.identity_future), self.model_wait_s)
        except TimeoutError:
            raise ModelUnavailable("the model is still being fetched; retry shortly") from None

    def must_not_store(self, request: CanonicalRequest) -> bool:
        """Whether a do-not-cache pattern matches the prompt or the negative prompt."""
        return any(
            p.search(text)
            for p in self.no_store_patterns
            for text in (request.prompt, request.negative_prompt)
        )

    @staticmethod
    def key_for(request: CanonicalRequest, identity: ModelIdentity) -> str:
        return make_key({"request": request.as_dict(), **identity.key_fields()})

    def stats(self) -> dict[str, Any]:
        """Requests (images asked for), generations (pipeline runs), images generated,
        hit rate, per tier: hits, entries, bytes and errors; latency percentiles."""
        tiers = self.cache.stats()
        with self._lock:
            counts = self._counts.copy()
            latency = {name: sorted(values) for name, values in self._latency.items()}
        hits = 0
        for name, tier in tiers.items():
            tier["hits"] = counts[f"hits:{name}"]
            hits += tier["hits"]
        requests = counts["requests"]
        return {
            "requests": requests,
            "generations": counts["generations"],
            "generated_images": counts["generated_images"],
            "hit_rate": round(hits / requests, 4) if requests else 0.0,
            "tiers": tiers,
            "embeddings": self.engine.embeddings.stats(),
            "queue_depth": self.engine.queue_depth,
            "latency": {name: _percentiles(values) for name, values in latency.items()},
        }

    async def _fill(
        self,
        namespace: str,
        items: dict[str, CanonicalRequest],
        progress: Progress | None,
        ticket: QueueTicket | None = None,
    ) -> None:
        """Produce the entries of missed keys and resolve their flights: generate and
        store them, or, for keys another replica holds the lock of, wait for its result."""
        flights = {key: self._flights[(namespace, key)] for key in items}
        try:
            outcomes = await self._produce(namespace, items, progress, ticket)
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

    async def _produce(
        self,
        namespace: str,
        items: dict[str, CanonicalRequest],
        progress: Progress | None,
        ticket: QueueTicket | None = None,
    ) -> dict[str, Outcome]:
        """Outcomes of the keys in `items`, leaving out those whose callers all left
        while another replica was making them."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.replica_wait_s
        done: dict[str, Outcome] = {}
        pending = dict(items)
        while pending:
            # 1. Take the cross-replica lock of each key we can; the rest are another's.
            #    Past the deadline nobody is waited for any more: generate them here.
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

            # 2. Generate ours (one batch) and store them before the locks go.
            if mine:
                done.update(await self._generate_and_store(namespace, mine, progress, ticket))

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

    async def _generate_and_store(
        self,
        namespace: str,
        mine: dict[str, tuple[CanonicalRequest, Lease | None]],
        progress: Progress | None,
        ticket: QueueTicket | None = None,
    ) -> dict[str, Outcome]:
        leases = [lease for _, lease in mine.values() if lease is not None]
        keepalive = [asyncio.ensure_future(self._keep_alive(lease)) for lease in leases]
        try:
            # The previous holder of a lock may have stored the entry before we took it.
            done: dict[str, Outcome] = {}
            if leases:
                found = await asyncio.to_thread(lambda: {k: self.cache.get(namespace, k) for k in mine})
                done = {k: (h.tier, h.entry, {}) for k, h in found.items() if isinstance(h, Hit)}
            todo = {k: c for k, (c, _) in mine.items() if k not in done}
            if todo:
                generated = await self._generate(
                    list(todo.values()),
                    progress,
                    embedding_scope=namespace,
                    ticket=ticket,
                    flights=[(namespace, key) for key in todo],
                )
                stored = time.perf_counter()
                await asyncio.to_thread(
                    lambda: [
                        self.cache.put(namespace, k, e) for k, (e, _) in zip(todo, generated, strict=True)
                    ]
                )
                store_s = time.perf_counter() - stored
                for key, (entry, timings) in zip(todo, generated, strict=True):
                    done[key] = (MISS_TIER, entry, {**timings, "store": store_s})
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
            hit = await asyncio.to_thread(self.cache.get, namespace, key)
            if isinstance(hit, Hit):
                return hit
            try:
                held = await asyncio.to_thread(self.locks.lock_held, namespace, key)
            except TierUnavailable:
                return MISS
            if not held:
                # Stored and released between our two looks, or abandoned.
                return await asyncio.to_thread(self.cache.get, namespace, key)

    @staticmethod
    async def _keep_alive(lease: Lease) -> None:
        while True:
            await asyncio.sleep(lease.refresh_every_s)
            if not await asyncio.to_thread(lease.refresh):
                log.warning("lost a generation lock; another replica may generate the same image")
                return

    async def _generate(
        self,
        canonicals: list[CanonicalRequest],
        progress: Progress | None,
        *,
        embedding_scope: str | None,
        ticket: QueueTicket | None = None,
        flights: list[tuple[str, str]] | None = None,
    ) -> list[tuple[Entry, dict[str, float]]]:
        queued = time.perf_counter()
        future = self.engine.submit(canonicals, progress, embedding_scope=embedding_scope)
        if ticket is not None:
            ticket.jobs.append((future, flights or []))
        self._count("generations")
        self._count("generated_images", len(canonicals))
        try:
            generated = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if ticket is None or not ticket.cancelled or not future.cancelled():
                raise  # the service is stopping
            self._count("generations", -1)
            self._count("generated_images", -len(canonicals))
            raise JobCancelled("cancelled before the model started on it; nothing was generated") from None
        first = canonicals[0]
        # Prompts are user data: logged only when asked for, and never a do-not-cache one.
        shown = f": {first.prompt!r}" if self.log_prompts and not self.must_not_store(first) else ""
        log.info(
            "generated %d image(s) %dx%d, %d steps, in %.2f s%s",
            len(canonicals),
            first.width,
            first.height,
            first.steps,
            time.perf_counter() - queued,
            shown,
        )
        out = []
        for canonical, image in zip(canonicals, generated, strict=True):
            timings = dict(image.timings)
            timings["queue"] = time.perf_counter() - queued - sum(image.timings.values())
            meta = {
                "seed": canonical.seed,
                "width": canonical.width,
                "height": canonical.height,
                "steps": canonical.steps,
            }
            out.append((Entry(data=image.data, ext=image.ext, meta=meta), timings))
        return out

    def _results(
        self,
        keys: list[str],
        canonicals: list[CanonicalRequest],
        outcomes: list[Outcome],
        durations: list[float],
    ) -> list[GenerationResult]:
        results = [
            GenerationResult(
                key=key, cache=tier, entry=entry, request=canonical, duration=duration, timings=timings
            )
            for key, canonical, (tier, entry, timings), duration in zip(
                keys, canonicals, outcomes, durations, strict=True
            )
        ]
        with self._lock:
            for result in results:
                if result.cache in (MISS_TIER, BYPASS_TIER):
                    self._latency["generation"].append(result.duration)
                else:
                    self._counts[f"hits:{result.cache}"] += 1
                    self._latency["hit"].append(result.duration)
        for observer in self.observers:
            for result in results:
                observer(result)
        return results

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": round(pick(0.50), 6), "p95": round(pick(0.95), 6), "count": len(values)}


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # Every waiter gets the exception; this keeps asyncio from reporting it as
    # never retrieved when no waiter was left.
    if not future.cancelled():
        future.exception()
