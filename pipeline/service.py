"""The one generation path: canonical request -> key -> cache -> engine -> cache -> result.

The UI, every HTTP route and prewarm call `GenerationService.generate`; there is
no second way to produce or look up an image.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cache import MISS, Entry, Hit, LayeredCache, TierUnavailable, is_namespace, make_key
from pipeline.engine import Engine, ModelUnavailable
from pipeline.loading import ModelIdentity
from pipeline.request import CanonicalRequest, GenerationRequest, Normalization, RequestInvalid, check_size

log = logging.getLogger(__name__)

MISS_TIER, BYPASS_TIER = "miss", "bypass"
# How a replica waiting for another's generation polls the shared cache.
POLL_START_S, POLL_MAX_S = 0.02, 0.5
# A replica stops waiting for another after this and generates itself.
WAIT_LIMIT_S = 600.0


class Lease(Protocol):
    refresh_every_s: float

    def refresh(self) -> bool: ...
    def release(self) -> None: ...


class FlightLocks(Protocol):
    """Cross-replica single flight: one lock per entry (the Redis tier provides it)."""

    def try_lock(self, namespace: str, key: str) -> Lease | None: ...
    def lock_held(self, namespace: str, key: str) -> bool: ...


@dataclass(frozen=True)
class GenerationResult:
    """What a caller gets back: the stored bytes and where they came from."""

    key: str
    cache: str  # memory | disk | redis | miss | bypass
    entry: Entry
    request: CanonicalRequest
    duration: float  # seconds spent in the service for this call
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.request.seed


class GenerationService:
    """Looks up the cache, else generates (once per key at a time), then stores.

    Guarantees: a hit never waits behind a generation (lookups run on their own
    threads, the model on the engine's); concurrent identical requests share one
    generation — in this process always, across replicas when `locks` is given
    (a Redis lock; if Redis is down each replica generates for itself); that
    generation finishes and is stored even if every caller gives up waiting.
    `no_cache`, and prompts matching `no_store_patterns`, neither read nor write
    the cache.
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
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.locks = locks
        self.normalization = normalization
        self.no_store_patterns = list(no_store_patterns)
        self.model_wait_s = model_wait_s
        self._flights: dict[tuple[str, str], asyncio.Task[tuple[str, Entry, dict[str, float]]]] = {}
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def generate(
        self, request: GenerationRequest, *, namespace: str = "public", no_cache: bool = False
    ) -> GenerationResult:
        started = time.perf_counter()
        self._count("requests")

        # 1. Validate what depends on the served model, and canonicalise.
        if not is_namespace(namespace):
            raise RequestInvalid("namespace", f"namespace {namespace!r} must be 1-64 of a-z, 0-9, _ and -")
        identity = await self.model_identity()
        canonical = request.canonical(self.normalization)
        check_size("width", canonical.width, identity.min_size, identity.max_size)
        check_size("height", canonical.height, identity.min_size, identity.max_size)
        key = self.key_for(canonical, identity)

        # 2. Bypass (asked for, or a do-not-cache prompt): generate, store nothing.
        if no_cache or self.must_not_store(canonical):
            entry, timings = await self._generate(canonical)
            return self._result(key, BYPASS_TIER, entry, canonical, started, timings)

        # 3. Look up the tiers, fastest first.
        hit = await asyncio.to_thread(self.cache.get, namespace, key)
        if isinstance(hit, Hit):
            self._count(f"hits:{hit.tier}")
            lookup = time.perf_counter() - started
            return self._result(key, hit.tier, hit.entry, canonical, started, {"lookup": lookup})

        # 4. Miss: join the fill of this key already under way here, or start one.
        flight = self._flights.get((namespace, key))
        if flight is None:
            flight = asyncio.ensure_future(self._fill(namespace, key, canonical))
            self._flights[(namespace, key)] = flight
            flight.add_done_callback(lambda done: self._land(namespace, key, done))
        tier, entry, timings = await asyncio.shield(flight)
        if tier != MISS_TIER:
            self._count(f"hits:{tier}")
        return self._result(key, tier, entry, canonical, started, timings)

    async def lookup(self, namespace: str, key: str) -> Hit | Any:
        """A stored entry by key (for `/images/{key}`), or MISS."""
        if not is_namespace(namespace):
            return MISS
        return await asyncio.to_thread(self.cache.get, namespace, key)

    async def model_identity(self) -> ModelIdentity:
        """The served model's identity; waits (bounded) while it is being resolved."""
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
        return make_key(
            {"request": request.as_dict(), "model": identity.fingerprint, "dtype": identity.dtype}
        )

    def stats(self) -> dict[str, Any]:
        """Requests, generations (pipeline runs), hit rate, and per tier: hits (of
        generation requests), entries, bytes and errors."""
        tiers = self.cache.stats()
        with self._lock:
            counts = self._counts.copy()
        hits = 0
        for name, tier in tiers.items():
            tier["hits"] = counts[f"hits:{name}"]
            hits += tier["hits"]
        requests = counts["requests"]
        return {
            "requests": requests,
            "generations": counts["generations"],
            "hit_rate": round(hits / requests, 4) if requests else 0.0,
            "tiers": tiers,
            "embeddings": self.engine.embeddings.stats(),
        }

    async def _fill(
        self, namespace: str, key: str, canonical: CanonicalRequest
    ) -> tuple[str, Entry, dict[str, float]]:
        """Produce the entry for a missed key: generate and store it, or, while another
        replica holds its lock, wait for that replica to store it."""
        started = time.perf_counter()

        # 1. Take the cross-replica lock, or wait for its holder's result.
        lease: Lease | None = None
        if self.locks is not None:
            while time.perf_counter() - started < WAIT_LIMIT_S:
                try:
                    lease = await asyncio.to_thread(self.locks.try_lock, namespace, key)
                except TierUnavailable:
                    break  # Redis is down: generating here beats not answering
                if lease is not None:
                    break
                hit = await self._await_other_replica(namespace, key)
                if isinstance(hit, Hit):
                    return hit.tier, hit.entry, {"wait": time.perf_counter() - started}
                # The holder let go without storing (it failed or died): take over.

        try:
            # 2. The previous holder may have stored it between our miss and our lock.
            if lease is not None:
                hit = await asyncio.to_thread(self.cache.get, namespace, key)
                if isinstance(hit, Hit):
                    return hit.tier, hit.entry, {"wait": time.perf_counter() - started}

            # 3. Generate, keeping the lock alive for as long as it takes.
            keepalive = asyncio.ensure_future(self._keep_alive(lease)) if lease else None
            try:
                entry, timings = await self._generate(canonical)
            finally:
                if keepalive:
                    keepalive.cancel()

            # 4. Store in every tier before the lock goes, so waiters find it.
            stored = time.perf_counter()
            await asyncio.to_thread(self.cache.put, namespace, key, entry)
            timings["store"] = time.perf_counter() - stored
            return MISS_TIER, entry, timings
        finally:
            if lease is not None:
                await asyncio.to_thread(lease.release)

    async def _await_other_replica(self, namespace: str, key: str) -> Hit | Any:
        """Poll, with back-off, until the entry appears (Hit) or its lock is gone (MISS)."""
        assert self.locks is not None
        delay = POLL_START_S
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)
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
                log.warning("lost the generation lock; another replica may generate the same image")
                return

    async def _generate(self, canonical: CanonicalRequest) -> tuple[Entry, dict[str, float]]:
        queued = time.perf_counter()
        future = self.engine.submit(canonical)
        self._count("generations")
        generated = await asyncio.wrap_future(future)
        timings = dict(generated.timings)
        timings["queue"] = time.perf_counter() - queued - sum(generated.timings.values())
        meta = {
            "seed": canonical.seed,
            "width": canonical.width,
            "height": canonical.height,
            "steps": canonical.steps,
        }
        return Entry(data=generated.data, ext=generated.ext, meta=meta), timings

    def _result(
        self,
        key: str,
        tier: str,
        entry: Entry,
        canonical: CanonicalRequest,
        started: float,
        timings: dict[str, float],
    ) -> GenerationResult:
        return GenerationResult(
            key=key,
            cache=tier,
            entry=entry,
            request=canonical,
            duration=time.perf_counter() - started,
            timings=timings,
        )

    def _land(self, namespace: str, key: str, flight: asyncio.Task[Any]) -> None:
        self._flights.pop((namespace, key), None)
        if not flight.cancelled() and flight.exception() is not None:
            # Every waiter already got the exception; this only keeps asyncio
            # from reporting it as never retrieved when nobody was left waiting.
            log.debug("generation of %s failed: %s", key, flight.exception())

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
