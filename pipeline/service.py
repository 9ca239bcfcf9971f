"""The one generation path: canonical request -> key -> cache -> engine -> cache -> result,
in the format asked for (made from the stored PNG: pipeline/derived.py).

The UI, every HTTP route and prewarm call `GenerationService.generate` (or its
batch form); there is no second way to produce or look up an image.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from cache import DEFAULT_NAMESPACE, MISS, Entry, Hit, LayeredCache, bad_namespace, is_namespace
from pipeline.controlnet import EditInput
from pipeline.derived import Encodings
from pipeline.encoding import STORED_FORMAT
from pipeline.engine import Engine
from pipeline.errors import JobCancelled, ModelUnavailable, RequestInvalid
from pipeline.keys import generation_key
from pipeline.limits import MAX_SEED, RANDOM_SEED, Normalization
from pipeline.loading import ModelIdentity
from pipeline.lora import LoraSet, lora_inputs
from pipeline.queue_ticket import QueueTicket
from pipeline.rendering import Progress
from pipeline.request import CanonicalRequest, GenerationRequest, check_size, random_seed
from pipeline.results import BYPASS_TIER, MISS_TIER, GenerationResult, Outcome
from pipeline.single_flight import WAIT_LIMIT_S, FlightLocks, SingleFlight
from pipeline.statistics import ServiceStatistics
from pipeline.suggestions import SIMILAR_TIER, NearLook, Suggestions
from similarity import Match

log = logging.getLogger(__name__)


class GenerationService:
    """Looks up the cache, else generates (once per key at a time), then stores.

    Guarantees: a hit never waits behind a generation (lookups run on the event
    loop or threads, the model on the engine's); concurrent identical requests
    share one generation (pipeline.single_flight) — in this process always, across
    replicas when `locks` is given (a Redis lock; if Redis is down each replica
    generates for itself); that generation finishes and is stored even if every
    caller gives up waiting. Waiting for another replica's generation is bounded
    by `replica_wait_s` (then this replica generates itself) and ends as soon as no
    caller waits for the result. `no_cache`, and prompts matching
    `no_store_patterns`, neither read nor write the cache, the prompt-embedding
    cache included. The format asked for is not part of the generation: the image
    is generated and stored once, as PNG, and served in any format, a JPEG or WebP
    made from the stored PNG (and stored too) when first asked for (pipeline.derived).
    With `suggestions`, a miss also carries the stored prompts of its namespace like
    its own (`similar`), and a request with `similar_threshold` gets the nearest
    stored image at or above it, labelled `similar` (never by default). Observers
    see every result (for metrics). With an input `image` (pipeline.image_input) the
    images are edits of it: the key's `inputs` section holds its pixels' hash and
    every parameter of the edit (pipeline.keys); near-repeats neither suggest nor
    remember edits (a prompt alone does not say what an edit looks like).
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
        suggestions: Suggestions | None = None,
    ) -> None:
        self.engine = engine
        self.suggestions = suggestions
        self.cache = cache
        self.normalization = normalization
        self.no_store_patterns = list(no_store_patterns)
        self.model_wait_s = model_wait_s
        self.log_prompts = log_prompts
        self.flights = SingleFlight(cache, locks, replica_wait_s=replica_wait_s)
        self.encodings = Encodings(cache)
        self.statistics = ServiceStatistics()
        self.observers: list[Callable[[GenerationResult], None]] = []

    async def generate(
        self,
        request: GenerationRequest,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        no_cache: bool = False,
        normalization: Normalization | None = None,
        progress: Progress | None = None,
        ticket: QueueTicket | None = None,
        similar_threshold: float | None = None,
        image: EditInput | None = None,
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
            similar_threshold=similar_threshold,
            image=image,
        )
        return results[0]

    async def generate_batch(
        self,
        request: GenerationRequest,
        batch_size: int,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        no_cache: bool = False,
        normalization: Normalization | None = None,
        progress: Progress | None = None,
        ticket: QueueTicket | None = None,
        similar_threshold: float | None = None,
        image: EditInput | None = None,
    ) -> list[GenerationResult]:
        """`batch_size` images of one prompt, image i with seed `seed + i` (each drawn when
        the seed is -1), in `request.format`. Each is looked up on its own; the misses
        are generated together.
        `ticket`, when given, is told the engine jobs this call starts (see `cancel`);
        JobCancelled when they were cancelled before they started."""
        started = time.perf_counter()
        self.statistics.count("requests", batch_size)

        # 1. Validate what depends on the served model, and canonicalise.
        if not is_namespace(namespace):
            raise RequestInvalid("namespace", bad_namespace(namespace))
        if similar_threshold is not None and image is not None:
            raise RequestInvalid("similar_threshold", "is for text-to-image; an edit is made from its image")
        if similar_threshold is not None and not (0 < similar_threshold <= 1 and batch_size == 1):
            raise RequestInvalid(
                "similar_threshold", "must be above 0 and at most 1, for one image (batch_size 1)"
            )
        identity = await self.model_identity()
        base = request.canonical(normalization or self.normalization)
        check_size("width", base.width, identity.min_size, identity.max_size)
        check_size("height", base.height, identity.min_size, identity.max_size)
        if request.seed == RANDOM_SEED:
            seeds = [base.seed] + [random_seed() for _ in range(batch_size - 1)]
        else:
            seeds = [(base.seed + i) % (MAX_SEED + 1) for i in range(batch_size)]
        canonicals = [replace(base, seed=seed) for seed in seeds]
        loras: LoraSet = ()
        if request.loras:  # (their files are read and hashed: off the loop; a plain hit takes no thread)
            loras = await asyncio.to_thread(self.engine.loras.resolve, request.loras, identity.demo)
        inputs = lora_inputs(loras) | (image.key_fields() if image is not None else {})
        keys = [self.key_for(c, identity, inputs) for c in canonicals]
        ext = request.format

        # 2. Bypass (asked for, or a do-not-cache prompt): generate, store nothing.
        if no_cache or self.must_not_store(base):
            generated = await self._generate(
                canonicals, progress, embedding_scope=None, ticket=ticket, loras=loras, image=image
            )
            bypassed = await asyncio.gather(*(self.encodings.convert(e, ext, t) for e, t in generated))
            took = [time.perf_counter() - started] * batch_size
            return self._results(
                keys, canonicals, [(BYPASS_TIER, e, t) for e, t in bypassed], took, loras=loras
            )

        # 3. Look up the tiers, fastest first, on the event loop: memory and Redis
        #    (redis.asyncio) take no thread hop, the disk only to read a file it has.
        #    Another format than the stored one: its stored copy, else made from the
        #    stored image (on a thread) and stored.
        hits = await self.encodings.lookup_many(namespace, keys, ext)
        lookup = time.perf_counter() - started
        outcomes: dict[int, Outcome] = {
            i: (hit.tier, hit.entry, {"lookup": lookup, **made})
            for i, (hit, made) in enumerate(hits)
            if isinstance(hit, Hit)
        }
        # Each image's own time: a hit's is its lookup (in a batch with misses too,
        # the misses' generation is not the hits' time); a miss's, until its flight lands.
        took = dict.fromkeys(outcomes, lookup)

        # 3b. Near-repeats, on a miss: the stored prompts of this namespace like this
        #     one; with `similar_threshold`, the nearest stored image at or above it.
        #     Only for text-to-image without LoRAs, whose images are all the index
        #     holds: an image made from other inputs is not what a prompt alone makes.
        look: NearLook | None = None
        near: Match | None = None
        suggestions = self.suggestions if not inputs else None
        if len(outcomes) < batch_size and suggestions is not None:
            look = await suggestions.look(
                self.cache, namespace, identity, base.prompt, similar_threshold or 1.0
            )
            if similar_threshold is not None:
                found = await suggestions.approximate(
                    self.cache, namespace, look, similar_threshold, base.width, base.height
                )
                if found is not None:
                    near, stored = found
                    entry, encode_s = await self.encodings.encode(namespace, near.key, stored, ext)
                    keys[0] = near.key
                    meta = stored.meta
                    canonicals[0] = replace(
                        base,
                        prompt=near.prompt,
                        seed=meta.get("seed", base.seed),
                        steps=meta.get("steps", base.steps),
                    )
                    outcomes[0] = (SIMILAR_TIER, entry, {"lookup": time.perf_counter() - started, **encode_s})
                    took[0] = time.perf_counter() - started

        # 4. Misses: one flight per key, here and across replicas; the keys nobody is
        #    making yet are generated in one batch and stored.
        missed = {keys[i]: canonicals[i] for i in range(batch_size) if i not in outcomes}
        if missed:

            async def produce(todo: dict[str, CanonicalRequest]) -> dict[str, Outcome]:
                made = await self._generate_and_store(
                    namespace, todo, progress, ticket, identity, loras, image
                )
                if suggestions is not None:
                    for key, canonical in todo.items():
                        await suggestions.remember(
                            namespace, identity, key, canonical.prompt, look.vector if look else None
                        )
                return made

            landed: dict[str, float] = {}
            made = await self.flights.run(
                namespace, missed, produce, lambda key: landed.setdefault(key, time.perf_counter() - started)
            )
            # The flights made (or found) the stored images; this caller's format is
            # made from them, once for all callers asking for it.
            todo = [i for i in range(batch_size) if i not in outcomes]
            encoded = await asyncio.gather(
                *(self.encodings.encode(namespace, keys[i], made[keys[i]][1], ext) for i in todo)
            )
            for i, (entry, encode_s) in zip(todo, encoded, strict=True):
                tier, _, timings = made[keys[i]]
                outcomes[i] = (tier, entry, {**timings, **encode_s})
                took[i] = landed[keys[i]] + sum(encode_s.values())

        # 5. The results, counted and shown to the observers.
        similar = look.shown if look is not None else ()
        return self._results(
            keys,
            canonicals,
            [outcomes[i] for i in range(batch_size)],
            [took[i] for i in range(batch_size)],
            similar=tuple(m for m in similar if m.key not in keys),
            near=near,
            loras=loras,
        )

    async def near_repeats(
        self, request: GenerationRequest, *, namespace: str, normalization: Normalization | None = None
    ) -> tuple[Match, ...]:
        """What `generate_batch` will offer as `similar` for `request` (one image), known
        before it is generated: the UI shows them while the image is made. Nothing for
        a hit, a do-not-store prompt, a bad namespace, or without near-repeats. Counts
        nothing: the miss itself counts what it offers. Invalid input raises as
        `generate_batch` does."""
        if self.suggestions is None or not is_namespace(namespace):
            return ()
        identity = await self.model_identity()
        base = request.canonical(normalization or self.normalization)
        if self.must_not_store(base):
            return ()
        if request.seed != RANDOM_SEED and isinstance(
            await self.lookup(namespace, self.key_for(base, identity)), Hit
        ):
            return ()
        look = await self.suggestions.look(self.cache, namespace, identity, base.prompt, 1.0, counted=False)
        return look.shown

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
            if any(self.flights.waiting(*name) > 1 for name in flights):
                continue  # someone else waits for this image too
            ticket.cancelled = True
            if self.engine.cancel(job):
                cancelled = True
                for name in flights:
                    self.flights.unlist(*name)
        return cancelled

    def interrupt(self, ticket: QueueTicket) -> bool:
        """Stop the running jobs `ticket` started after the denoising step under way,
        unless someone else waits for their images (single flight): True when they
        will stop (their caller then gets JobInterrupted; nothing is stored); False
        when they are shared, and go on for the others (and are stored): this caller
        may only stop waiting. Queued jobs are `cancel`'s. Call it on the event loop."""
        flights = [name for _, names in ticket.jobs for name in names]

        def shared() -> bool:
            return any(self.flights.waiting(*name) > 1 for name in flights)

        if shared():
            return False
        ticket.shared = shared
        ticket.interrupted = True
        return True

    async def lookup(self, namespace: str, key: str, ext: str = STORED_FORMAT) -> Hit | Any:
        """A stored image by key in the format `ext` (made from the stored PNG when it
        is not kept in that format yet), or MISS."""
        return (await self.image(namespace, key, ext))[0]

    async def image(self, namespace: str, key: str, ext: str) -> tuple[Hit | Any, dict[str, float]]:
        """`lookup`, with the seconds it took to make the format (for `/images/{key}.{ext}`)."""
        if not is_namespace(namespace):
            return MISS, {}
        return await self.encodings.lookup(namespace, key, ext)

    async def model_identity(self) -> ModelIdentity:
        """The served model's identity; waits (bounded) while it is being resolved."""
        if (identity := self.engine.identity) is not None:
            return identity
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.engine.identity_future), self.model_wait_s)
        except TimeoutError:
            raise ModelUnavailable("the model is still being fetched; retry shortly") from None

    async def lora_listing(self) -> list[dict[str, Any]]:
        """The LoRAs requests may name (pipeline.lora): name, file name and size."""
        identity = await self.model_identity()
        return await asyncio.to_thread(self.engine.loras.listing, identity.demo)

    async def controlnet_fingerprint(self) -> str | None:
        """The `--controlnet` weights' fingerprint (for a control input's key); None without one."""
        await self.model_identity()  # known with the identity
        return self.engine.controlnet_fingerprint

    def must_not_store(self, request: CanonicalRequest) -> bool:
        """Whether a do-not-cache pattern matches the prompt or the negative prompt."""
        return any(
            p.search(text)
            for p in self.no_store_patterns
            for text in (request.prompt, request.negative_prompt)
        )

    @staticmethod
    def key_for(
        request: CanonicalRequest, identity: ModelIdentity, inputs: dict[str, Any] | None = None
    ) -> str:
        """The generation's key (pipeline.keys): the same for every format; `inputs`
        (e.g. `lora_inputs`) by content."""
        return generation_key(request, identity, inputs)

    def stats(self) -> dict[str, Any]:
        """Requests (images asked for), generations (pipeline runs), images generated,
        hit rate, per tier: hits, entries, bytes and errors; the prompt-embedding cache,
        the queue, latency percentiles (pipeline.statistics)."""
        stats = self.statistics.snapshot(self.cache.stats())
        latency = stats.pop("latency")
        if self.suggestions is not None:
            stats["near_repeats"] = self.suggestions.stats()
        return {
            **stats,
            "embeddings": self.engine.embeddings.stats(),
            "queue_depth": self.engine.queue_depth,
            "latency": latency,
        }

    async def _generate_and_store(
        self,
        namespace: str,
        todo: dict[str, CanonicalRequest],
        progress: Progress | None,
        ticket: QueueTicket | None,
        identity: ModelIdentity,
        loras: LoraSet = (),
        image: EditInput | None = None,
    ) -> dict[str, Outcome]:
        """Generate the entries of `todo` in one batch and store them in every tier
        (with near-repeats on, each tagged with its prompt: a lost index is rebuilt from it)."""
        generated = await self._generate(
            list(todo.values()),
            progress,
            embedding_scope=namespace,
            ticket=ticket,
            flights=[(namespace, key) for key in todo],
            loras=loras,
            image=image,
        )
        if self.suggestions is not None and image is None and not loras:  # (see 3b in `generate`)
            generated = [
                (self.suggestions.tagged(entry, c.prompt, identity), t)
                for c, (entry, t) in zip(todo.values(), generated, strict=True)
            ]
        stored = time.perf_counter()
        await asyncio.to_thread(
            lambda: [self.cache.put(namespace, k, e) for k, (e, _) in zip(todo, generated, strict=True)]
        )
        store_s = time.perf_counter() - stored
        return {
            key: (MISS_TIER, entry, {**timings, "store": store_s})
            for key, (entry, timings) in zip(todo, generated, strict=True)
        }

    async def _generate(
        self,
        canonicals: list[CanonicalRequest],
        progress: Progress | None,
        *,
        embedding_scope: str | None,
        ticket: QueueTicket | None = None,
        flights: list[tuple[str, str]] | None = None,
        loras: LoraSet = (),
        image: EditInput | None = None,
    ) -> list[tuple[Entry, dict[str, float]]]:
        queued = time.perf_counter()
        on_step = progress if ticket is None else ticket.stepping(progress)  # (`interrupt`)
        future = self.engine.submit(
            canonicals, on_step, embedding_scope=embedding_scope, loras=loras, image=image
        )
        if ticket is not None:
            ticket.add(future, flights or [])
        self.statistics.count("generations")
        self.statistics.count("generated_images", len(canonicals))
        try:
            generated = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if ticket is None or not ticket.cancelled or not future.cancelled():
                raise  # the service is stopping
            self.statistics.count("generations", -1)
            self.statistics.count("generated_images", -len(canonicals))
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
        # An edit's entry says its kind and strength; what it is an edit of stays out.
        edited = {"edit": image.kind, "strength": image.strength} if image is not None else {}
        out = []
        for canonical, made in zip(canonicals, generated, strict=True):
            timings = dict(made.timings)
            timings["queue"] = time.perf_counter() - queued - sum(made.timings.values())
            meta = {
                "seed": canonical.seed,
                "width": canonical.width,
                "height": canonical.height,
                "steps": canonical.steps,
                "made": int(time.time()),  # the image route's Last-Modified
            }
            meta |= edited
            out.append((Entry(data=made.data, ext=made.ext, meta=meta), timings))
        return out

    def _results(
        self,
        keys: list[str],
        canonicals: list[CanonicalRequest],
        outcomes: list[Outcome],
        durations: list[float],
        similar: tuple[Match, ...] = (),
        near: Match | None = None,
        loras: LoraSet = (),
    ) -> list[GenerationResult]:
        results = [
            GenerationResult(
                key=key,
                cache=tier,
                entry=entry,
                request=canonical,
                duration=duration,
                timings=timings,
                similar=similar,
                near=near if tier == SIMILAR_TIER else None,
                loras=loras,
            )
            for key, canonical, (tier, entry, timings), duration in zip(
                keys, canonicals, outcomes, durations, strict=True
            )
        ]
        self.statistics.served(results)
        for observer in self.observers:
            for result in results:
                observer(result)
        return results
