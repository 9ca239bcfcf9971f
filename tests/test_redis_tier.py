"""The Redis tier and its generation lock against a real redis-server, in-process."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.procs import wait_until
from cache import MISS, SCHEMA_VERSION, Entry, Hit, LayeredCache, MemoryTier, TierUnavailable, make_key
from cache.keyring import Keyring
from cache.redis_tier import INLINE_HMAC_MAX_BYTES, RedisTier
from tests.conftest import RedisServer

ENTRY = Entry(data=b"\x89PNG fake image bytes" * 100, ext="png", meta={"seed": 1})


def test_entries_live_under_the_documented_key_with_a_ttl(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, ttl_s=3600)
    key = make_key({"x": 1})
    tier.put("public", key, ENTRY)
    client = redis_server.client()
    assert client.exists(f"zimage:v{SCHEMA_VERSION}:unsigned:public:{key}")
    assert 3500_000 < client.pttl(f"zimage:v{SCHEMA_VERSION}:unsigned:public:{key}") <= 3600_000
    assert tier.get("public", key) == ENTRY
    assert tier.get("other", key) is MISS
    assert tier.stats()["entries"] == 1
    assert tier.stats()["bytes"] == client.strlen(f"zimage:v{SCHEMA_VERSION}:unsigned:public:{key}")


@pytest.mark.parametrize("secret", [None, b"s" * 32], ids=["checksum", "hmac"])
@pytest.mark.parametrize("api", ["get", "aget"])
def test_a_tampered_or_truncated_value_is_dropped(
    redis_server: RedisServer, api: str, secret: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    tier = RedisTier(redis_server.url, ttl_s=3600, keyring=Keyring.of([secret] if secret else []))
    read = tier.get if api == "get" else lambda ns, k: asyncio.run(tier.aget(ns, k))
    client = redis_server.client()
    big = Entry(data=bytes(INLINE_HMAC_MAX_BYTES + 1), ext="png")  # signed: checked on a thread by aget
    damages = [lambda b: b[:-1], lambda b: b[:-5] + b"XXXXX", lambda b: b"garbage"]
    for n, (entry, damage) in enumerate([(ENTRY, d) for d in damages] + [(big, damages[1])]):
        key = make_key({"x": n})
        tier.put("public", key, entry)
        assert read("public", key) == entry
        name = tier.redis_key("public", key)
        client.set(name, damage(client.get(name)))
        assert read("public", key) is MISS
        assert not client.exists(name)
    assert sum("dropping corrupt entry" in r.getMessage() for r in caplog.records) == 4


def test_lock_is_exclusive_token_checked_and_expires_when_its_holder_dies(redis_server: RedisServer) -> None:
    a = RedisTier(redis_server.url, ttl_s=60, lock_ttl_s=0.5)
    b = RedisTier(redis_server.url, ttl_s=60, lock_ttl_s=0.5)
    lease = a.try_lock("public", "k" * 64)
    assert lease is not None
    assert b.try_lock("public", "k" * 64) is None
    assert b.lock_held("public", "k" * 64)
    assert lease.refresh()
    lease.release()
    assert not b.lock_held("public", "k" * 64)

    dead = a.try_lock("public", "k" * 64)  # taken, never released: its holder "dies"
    assert dead is not None
    time.sleep(0.7)
    assert not b.lock_held("public", "k" * 64)
    taken = b.try_lock("public", "k" * 64)
    assert taken is not None
    dead.release()  # the late release of the dead holder must not free b's lock
    assert b.lock_held("public", "k" * 64)
    assert not dead.refresh()


def test_dead_redis_is_a_fast_miss_counted_once_and_reconnects(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, ttl_s=60)
    layered = LayeredCache([MemoryTier(1 << 20), tier])
    key = make_key({"x": "outage"})
    redis_server.kill()
    started = time.monotonic()
    for _ in range(50):
        assert layered.get("public", key) is MISS
    assert time.monotonic() - started < 2.0  # back-off: no connect attempt per call

    async def on_the_loop() -> None:
        for _ in range(50):
            assert await layered.aget("public", key) is MISS

    asyncio.run(on_the_loop())
    assert 1 <= layered.stats()["redis"]["errors"] < 10
    with pytest.raises(TierUnavailable):
        tier.try_lock("public", key)

    redis_server.start()

    def stored() -> bool:
        layered.put("public", key, ENTRY)
        return bool(redis_server.client().exists(f"zimage:v{SCHEMA_VERSION}:unsigned:public:{key}"))

    wait_until(stored, "the Redis tier to reconnect", timeout_s=15, interval_s=0.2)
    fresh = LayeredCache([MemoryTier(1 << 20), RedisTier(redis_server.url, ttl_s=60)])
    assert fresh.get("public", key) == Hit(ENTRY, "redis")
