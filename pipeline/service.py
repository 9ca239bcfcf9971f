"""The one generation path: canonical request -> key -> cache -> engine -> cache -> result.

The UI, every HTTP route and prewarm call `GenerationService.generate`; there is
no second way to produce or look up an image.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cache import MISS, Entry, Hit, LayeredCache, is_namespace, make_key
from pipeline.engine import Engine, ModelUnavailable
from pipeline.loading import ModelIdentity
from pipeline.request import CanonicalRequest, GenerationRequest, Normalization, RequestInvalid, check_size

log = logging.getLogger(__name__)

MISS_TIER, BYPASS_TIER = "miss", "bypass"


@dataclass(frozen=True)
class GenerationResult:
    """What a caller gets back: the stored bytes and where they came from."""

    key: str
    cache: str  # memory | disk | miss | bypass
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
    threads, the model on the engine's); concurrent identical requests in this
    process share one generation, which finishes and is stored even if every
    caller gives up waiting; `no_cache` neither reads nor writes the cache.
    """

    def __init__(
        self,
        engine: Engine,
        cache: LayeredCache,
        *,
        normalization: Normalization = "basic",
        model_wait_s: float = 600.0,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.normalization = normalization
        self.model_wait_s = model_wait_s
        self._flights: dict[tuple[str, str], asyncio.Task[tuple[Entry, dict[str, float]]]] = {}
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

        # 2. Bypass: generate, store nothing.
        if no_cache:
            entry, timings = await self._generate(canonical)
            return self._result(key, BYPASS_TIER, entry, canonical, started, timings)

        # 3. Look up the tiers, fastest first.
        hit = await asyncio.to_thread(self.cache.get, namespace, key)
        if isinstance(hit, Hit):
            self._count(f"hits:{hit.tier}")
            lookup = time.perf_counter() - started
            return self._result(key, hit.tier, hit.entry, canonical, started, {"lookup": lookup})

        # 4. Miss: join the generation of this key already under way, or start it.
        flight = self._flights.get((namespace, key))
        if flight is None:
            flight = asyncio.ensure_future(self._generate_and_store(namespace, key, canonical))
            self._flights[(namespace, key)] = flight
            flight.add_done_callback(lambda done: self._land(namespace, key, done))
        entry, timings = await asyncio.shield(flight)
        return self._result(key, MISS_TIER, entry, canonical, started, timings)

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
        }

    async def _generate_and_store(
        self, namespace: str, key: str, canonical: CanonicalRequest
    ) -> tuple[Entry, dict[str, float]]:
        entry, timings = await self._generate(canonical)
        started = time.perf_counter()
        await asyncio.to_thread(self.cache.put, namespace, key, entry)
        timings["store"] = time.perf_counter() - started
        return entry, timings

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
