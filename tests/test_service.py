"""GenerationService and Engine in-process with the tiny model: single flight across
replicas (real Redis), the prompt-embedding cache, and what is never stored."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cache import MISS, DiskTier, Hit, LayeredCache, MemoryTier
from cache.redis_tier import RedisTier
from pipeline.engine import Engine, EngineState
from pipeline.errors import GenerationFailed, JobCancelled
from pipeline.queue_ticket import QueueTicket
from pipeline.request import CanonicalRequest, GenerationRequest
from pipeline.service import GenerationService
from pipeline.tiny_model import ensure_tiny_model
from tests.conftest import RedisServer
from tests.engines import started


def request(prompt: str = "a lantern", **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=kw.pop("width", 64), height=kw.pop("height", 64), **kw)  # type: ignore[arg-type]


def local_service(engine: Engine, cache_dir: Path) -> GenerationService:
    """A service over a memory and a disk tier: one replica, no Redis."""
    return GenerationService(engine, LayeredCache([MemoryTier(1 << 20), DiskTier(cache_dir)]))


def redis_replica(
    engine: Engine, redis_server: RedisServer, lock_ttl_s: float = 5, **kw: object
) -> tuple[GenerationService, RedisTier]:
    """A replica's service over a memory tier and the shared Redis (whose locks it
    takes), and that Redis tier."""
    tier = RedisTier(redis_server.url, ttl_s=60, lock_ttl_s=lock_ttl_s)
    return GenerationService(engine, LayeredCache([MemoryTier(1 << 20), tier]), locks=tier, **kw), tier  # type: ignore[arg-type]


# -- single flight across replicas ------------------------------------------------------


def test_a_replica_waits_for_the_lock_holder_and_takes_its_stored_result(
    engine: Engine, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        service, _ = redis_replica(engine, redis_server)
        other = RedisTier(redis_server.url, ttl_s=60, lock_ttl_s=5)  # "another replica"
        req = request("a shared lantern", seed=3)
        key = service.key_for(req.canonical(), await service.model_identity())
        made = engine.submit([req.canonical()]).result()[0]
        lease = other.try_lock("public", key)
        assert lease is not None

        async def finish_elsewhere() -> None:
            # Once the service has missed and waits (its flight has started), not before.
            await until(lambda: bool(service.flights._fills), "the wait for the lock holder")
            from cache import Entry

            await asyncio.to_thread(other.put, "public", key, Entry(made.data, made.ext, {"seed": 3}))
            lease.release()

        helper = asyncio.ensure_future(finish_elsewhere())
        result = await service.generate(req)
        await helper
        assert result.cache == "redis"
        assert result.entry.data == made.data
        assert service.stats()["generations"] == 0

    asyncio.run(scenario())


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor (what asyncio.to_thread uses), counting what it runs."""

    submitted = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_a_redis_hit_takes_no_thread_hop(engine: Engine, redis_server: RedisServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        def replica(name: str) -> GenerationService:
            tier = RedisTier(redis_server.url, ttl_s=60)
            tiers = [MemoryTier(1 << 20), DiskTier(tmp_path / name), tier]
            return GenerationService(engine, LayeredCache(tiers), locks=tier)  # type: ignore[list-item]

        maker, other, third = replica("a"), replica("b"), replica("c")
        made = await maker.generate(request("a lantern seen from afar"))
        assert made.cache == "miss"
        threads = CountingExecutor(max_workers=2)
        asyncio.get_running_loop().set_default_executor(threads)
        hit = await other.generate(request("a lantern seen from afar"))  # GET /run, POST /generate
        found = await third.lookup("public", made.key)  # GET /images/{key}
        assert (hit.cache, hit.entry) == ("redis", made.entry)
        assert found == Hit(made.entry, "redis")
        assert threads.submitted == 0
        assert await other.lookup("public", made.key) == Hit(made.entry, "memory")  # promoted
        assert other.cache.wait_promotions(10)  # the copy to b's disk ran on the cache's own writer
        assert threads.submitted == 0

    asyncio.run(scenario())


def test_a_dead_lock_holder_blocks_others_only_until_the_lock_ttl(
    engine: Engine, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        service, tier = redis_replica(engine, redis_server, lock_ttl_s=1.0)
        req = request("an abandoned lantern")
        key = service.key_for(req.canonical(), await service.model_identity())
        dead = RedisTier(redis_server.url, ttl_s=60, lock_ttl_s=1.0).try_lock("public", key)
        assert dead is not None  # taken and never released or refreshed
        t0 = time.monotonic()
        result = await service.generate(req)
        waited = time.monotonic() - t0
        assert result.cache == "miss"
        assert service.stats()["generations"] == 1
        # It waited for the lock to expire (about its 1 s TTL), not for the wait
        # limit: the bound only has to fail a service that would wait for minutes.
        assert 0.8 < waited < BOUND_S
        assert tier.get("public", key) != MISS  # stored for everyone

    asyncio.run(scenario())


def test_concurrent_identical_requests_in_one_process_generate_once(engine: Engine, tmp_path: Path) -> None:
    async def scenario() -> None:
        service = local_service(engine, tmp_path)
        results = await asyncio.gather(
            *(service.generate(request("a crowd of lanterns", width=256)) for _ in range(8))
        )
        assert service.stats()["generations"] == 1
        assert {r.entry.data for r in results} == {results[0].entry.data}

    asyncio.run(scenario())


# A request that should not wait at all, or about a second, fails after this instead
# of hanging (and so fails on a service that would wait for ever).
BOUND_S = 30


@pytest.mark.parametrize(
    ("plant", "ttl_ms"),
    [("string", None), ("hash", None), ("string", 3_600_000), ("hash", 3_600_000), ("hash", 20_000)],
)
def test_a_planted_lock_key_does_not_hold_a_request(
    engine: Engine,
    redis_server: RedisServer,
    plant: str,
    ttl_ms: int | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No replica's lock lacks a TTL, has more than its 30 s left, or is not a string.
    async def scenario() -> None:
        service, tier = redis_replica(engine, redis_server)
        req = request(f"a stuck lantern ({plant}, {ttl_ms})")
        key = service.key_for(req.canonical(), await service.model_identity())
        name = tier.redis_key("public", key) + ":lock"
        client = redis_server.client()
        if plant == "string":
            client.set(name, "left by hand")
        else:
            client.hset(name, "a", "b")
        if ttl_ms is not None:
            client.pexpire(name, ttl_ms)
        with caplog.at_level(logging.WARNING, logger="cache.redis_tier"):
            result = await asyncio.wait_for(service.generate(req), BOUND_S)
            assert result.cache == "miss" and tier.get("public", key) != MISS
            assert tier.try_lock("public", key) is not None  # ignored again, ...
        assert len([r for r in caplog.records if name in r.getMessage()]) == 1  # ... logged once
        assert client.exists(name)  # not ours to remove

    asyncio.run(scenario())


def test_waiting_for_another_replica_is_bounded(engine: Engine, redis_server: RedisServer) -> None:
    async def scenario() -> None:
        service, _tier = redis_replica(engine, redis_server, replica_wait_s=1.0)
        req = request("a lantern somebody else is making")
        key = service.key_for(req.canonical(), await service.model_identity())
        # Another replica's lock (the same TTL as this one's), never released.
        assert RedisTier(redis_server.url, ttl_s=60, lock_ttl_s=5).try_lock("public", key) is not None
        result = await asyncio.wait_for(service.generate(req), BOUND_S)
        assert result.cache == "miss" and service.stats()["generations"] == 1

    asyncio.run(scenario())


def test_a_replica_stops_waiting_when_its_caller_leaves(engine: Engine, redis_server: RedisServer) -> None:
    async def scenario() -> None:
        service, _ = redis_replica(engine, redis_server)
        req = request("a lantern nobody waits for")
        key = service.key_for(req.canonical(), await service.model_identity())
        other = RedisTier(redis_server.url, ttl_s=60, lock_ttl_s=5).try_lock("public", key)
        assert other is not None  # another replica is making it (its lock lives 5 s)
        caller = asyncio.ensure_future(service.generate(req))
        await until(lambda: bool(service.flights._fills), "the wait for the other replica")
        assert service.flights._fills and not caller.done()
        caller.cancel()  # the client went away
        await asyncio.wait(set(service.flights._fills), timeout=BOUND_S)
        assert not service.flights._fills and not service.flights._flights  # the wait ended with it
        assert service.stats()["generations"] == 0
        # A new caller starts afresh (and waits, as the lock is still held).
        again = asyncio.ensure_future(service.generate(req))
        await until(lambda: bool(service.flights._flights), "a new flight")
        other.release()
        assert (await asyncio.wait_for(again, BOUND_S)).cache == "miss"

    asyncio.run(scenario())


# -- the queue: places, cancelling, each image's own time --------------------------------


class HeldEngine:
    """Keeps the engine busy with a job of its own until released: what waits behind it
    stays queued for as long as a test needs, with no timing involved."""

    def __init__(self, engine: Engine) -> None:
        self.started, self.gate = threading.Event(), threading.Event()

        def hold(done: int, total: int) -> None:
            self.started.set()
            self.gate.wait(BOUND_S)

        self.job = engine.submit([request("the engine is busy").canonical()], hold)
        assert self.started.wait(BOUND_S)

    def release(self) -> None:
        self.gate.set()
        self.job.result(BOUND_S)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop run until `condition` holds; fails naming `what` after BOUND_S.
    (bench.procs.wait_until's sleep would stop the loop that makes it hold.)"""
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {BOUND_S} s"
        await asyncio.sleep(0.01)


async def place_of(service: GenerationService, ticket: QueueTicket, place: int) -> None:
    await until(lambda: service.queue_position(ticket) == place, f"place {place} in the queue")


def test_a_queued_job_knows_its_place_and_can_be_cancelled(engine: Engine, tmp_path: Path) -> None:
    async def scenario() -> None:
        service = local_service(engine, tmp_path)
        held = HeldEngine(engine)
        first, second = QueueTicket(), QueueTicket()
        doomed = asyncio.ensure_future(
            service.generate_batch(request("a cancelled lantern"), 2, ticket=first)
        )
        await place_of(service, first, 1)
        kept = asyncio.ensure_future(service.generate(request("a kept lantern"), ticket=second))
        await place_of(service, second, 2)
        assert engine.queue_depth == 2
        assert service.cancel(first)
        # Someone asking for the same images right after is not given the cancellation.
        late = asyncio.ensure_future(service.generate_batch(request("a cancelled lantern"), 2))
        with pytest.raises(JobCancelled):
            await asyncio.wait_for(doomed, BOUND_S)
        await place_of(service, second, 1)  # moved up
        held.release()
        assert (await asyncio.wait_for(kept, BOUND_S)).cache == "miss"
        assert [r.cache for r in await asyncio.wait_for(late, BOUND_S)] == ["miss", "miss"]
        assert service.queue_position(second) is None and not service.cancel(second)  # ran: too late
        stats = service.stats()
        assert (stats["generations"], stats["generated_images"], stats["queue_depth"]) == (2, 3, 0)
        assert not service.flights._flights

    asyncio.run(scenario())


def test_cancel_leaves_a_job_that_another_caller_waits_for(engine: Engine, tmp_path: Path) -> None:
    async def scenario() -> None:
        service = local_service(engine, tmp_path)
        held = HeldEngine(engine)
        mine = QueueTicket()
        shared = request("a shared queued lantern")
        key = service.key_for(shared.canonical(), await service.model_identity())
        asking = asyncio.ensure_future(service.generate(shared, ticket=mine))
        await place_of(service, mine, 1)
        theirs = asyncio.ensure_future(service.generate(shared))
        await until(lambda: service.flights.waiting("public", key) == 2, "the second caller to join")
        assert not service.cancel(mine)  # single flight: someone else waits for this image
        held.release()
        results = await asyncio.wait_for(asyncio.gather(asking, theirs), BOUND_S)
        assert {r.entry.data for r in results} == {results[0].entry.data}
        assert service.stats()["generations"] == 1

    asyncio.run(scenario())


def test_each_image_of_a_mixed_batch_carries_its_own_time(engine: Engine, tmp_path: Path) -> None:
    async def scenario() -> None:
        service = local_service(engine, tmp_path)
        await service.generate(request("a mixed batch of lanterns", seed=100))
        results = await service.generate_batch(request("a mixed batch of lanterns", seed=100), 4)
        assert [r.cache for r in results] == ["memory", "miss", "miss", "miss"]
        hit, misses = results[0], results[1:]
        # The hit was there after its lookup, before the misses' generation began.
        assert hit.duration < min(m.duration for m in misses)
        latency = service.stats()["latency"]
        assert latency["hit"]["count"] == 1 and latency["hit"]["p95"] == round(hit.duration, 6)
        assert latency["generation"]["count"] == 4

    asyncio.run(scenario())


# -- the prompt-embedding cache ----------------------------------------------------------


def test_known_prompt_skips_the_text_encoder_and_images_stay_bit_identical(models_dir: Path) -> None:
    cached = started(Engine("tiny", models_dir, embedding_cache_bytes=1 << 20))
    uncached = started(Engine("tiny", models_dir, embedding_cache_bytes=0))
    try:
        for guidance in (0.0, 3.0):
            first = request("a fox", seed=1, guidance_scale=guidance, negative_prompt="blur").canonical()
            second = request(
                "a fox", seed=2, width=96, guidance_scale=guidance, negative_prompt="blur"
            ).canonical()
            cached.submit([first]).result()[0]
            runs = cached.embeddings.stats()["misses"]  # text-encoder runs
            a = cached.submit([second]).result()[0]
            assert (
                cached.embeddings.stats()["misses"] == runs
            )  # neither prompt nor negative prompt re-encoded
            b = uncached.submit([second]).result()[0]
            assert a.data == b.data
        assert cached.embeddings.stats()["hits"] >= 3

        # ...and equal to what the pipeline makes from the text itself
        import torch

        canonical = request("a fox", seed=2, width=96).canonical()
        direct = cached._pipe(
            prompt="a fox",
            height=64,
            width=96,
            num_inference_steps=8,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(2),
            output_type="np",
        ).images[0]
        served = np.asarray(Image.open(io.BytesIO(cached.submit([canonical]).result()[0].data)))
        assert np.array_equal(served, (direct * 255).round().clip(0, 255).astype("uint8"))
    finally:
        cached.close()
        uncached.close()


# -- what is never stored ---------------------------------------------------------------


def test_a_model_that_makes_nan_images_fails_its_warm_up_with_the_reason(
    models_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(ensure_tiny_model(models_dir), broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_out.bias"].fill_(float("nan"))
    save_file(tensors, weights)
    engine = Engine(str(broken), models_dir)
    engine.start()  # its warm-up fails: the model is marked failed with the reason
    engine.wait_settled(60)
    assert engine.state == EngineState.FAILED
    assert "NaN" in (engine.error or "")
    engine.close()


def test_failed_generation_stores_nothing(engine: Engine, tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    service = GenerationService(engine, LayeredCache([MemoryTier(1 << 20), disk]))
    original = engine._pipe.vae.decoder.conv_out.bias.detach().clone()
    try:
        engine._pipe.vae.decoder.conv_out.bias.data.fill_(float("nan"))
        with pytest.raises(GenerationFailed, match="NaN"):
            asyncio.run(service.generate(request("a poisoned lantern")))
    finally:
        engine._pipe.vae.decoder.conv_out.bias.data.copy_(original)
    assert disk.stats()["entries"] == 0
    assert service.cache.stats()["memory"]["entries"] == 0


def test_do_not_cache_patterns_generate_but_never_store(engine: Engine, tmp_path: Path) -> None:
    import re

    disk = DiskTier(tmp_path)
    service = GenerationService(
        engine, LayeredCache([MemoryTier(1 << 20), disk]), no_store_patterns=[re.compile("secret", re.I)]
    )

    async def scenario() -> None:
        first = await service.generate(request("my SECRET lantern"))
        second = await service.generate(request("my SECRET lantern"))
        assert (first.cache, second.cache) == ("bypass", "bypass")
        assert first.entry.data == second.entry.data
        assert (await service.generate(request("a public lantern"))).cache == "miss"

    asyncio.run(scenario())
    assert disk.stats()["entries"] == 1
    assert service.stats()["generations"] == 3


def test_cached_prompt_embeddings_hold_no_autograd_graph(engine: Engine) -> None:
    # A graph kept alive by a cached embedding is memory the cache's byte bound
    # never sees (it grew a server by ~2.7 MB per new prompt under load).
    engine.submit([CanonicalRequest("a graph-free prompt", "", 1, 64, 64, 1, 0.0)]).result()
    cached = [tensors for tensors in engine.embeddings._lru.values()]
    assert cached
    for tensors in cached:
        assert all(t.grad_fn is None and not t.requires_grad for t in tensors)
