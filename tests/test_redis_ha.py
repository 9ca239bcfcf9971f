"""Redis beyond one instance, for real: two replicas on a Sentinel-watched master that
fails over under load, and the tier on a three-node Redis Cluster; plus the checks on
`--redis-url` for both forms."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.procs import ROOT, wait_until
from cache import MISS, SCHEMA_VERSION, Entry, Hit, LayeredCache, MemoryTier, TierUnavailable, make_key
from cache.redis_tier import RedisTier
from cache.redis_url import parse_redis_url
from tests.conftest import Server, replica_pair
from tests.redis_ha import ClusterGroup, SentinelGroup

ENTRY = Entry(data=b"\x89PNG cluster bytes" * 200, ext="png", meta={"seed": 5})


# -- the URL forms -------------------------------------------------------------------


def test_sentinel_and_cluster_urls_parse_into_nodes_service_and_db() -> None:
    s = parse_redis_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/zimage/2?sentinel_password=sp")
    assert (s.kind, s.nodes, s.service, s.db) == (
        "sentinel",
        (("10.0.0.1", 26379), ("10.0.0.2", 26380)),
        "zimage",
        2,
    )
    assert (s.password, s.sentinel_password) == ("pw", "sp")
    c = parse_redis_url("redis+cluster://a:7000,b:7001")
    assert (c.kind, c.nodes) == ("cluster", (("a", 7000), ("b", 7001)))
    assert parse_redis_url("redis://localhost:6379/3").db == 3


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:26379", "names no master"),
        ("redis+sentinel://h/zimage", "node 1 is not host:port"),
        ("redis+sentinel://h:1,h:port/zimage", "the port of node 2 is not a TCP port"),
        ("redis+sentinel://h:26379/zimage/x", "the database (after the master name) is not a number"),
        ("rediss://h:6379/abc", "the database (after host:port) is not a number"),
        ("redis://h:6379/1x", "the database (after host:port) is not a number"),
        ("redis+sentinel://h:26379/zimage?sentinel_pass=x", "unknown option(s) sentinel_pass"),
        ("redis+cluster://h:7000/3", "only database 0"),
        ("sentinel://h:26379/zimage", "unknown scheme 'sentinel'"),
        ("localhost:6379", "is not a Redis URL"),
    ],
)
def test_a_bad_redis_url_is_refused_saying_what_to_write(url: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    assert says in str(info.value)


SECRET, SENTINEL_SECRET = "Pw-s3cr3t-9f", "Sp-s3cr3t-7e"
MALFORMED_WITH_SECRETS = [
    f"redis://:{SECRET}@h:6379/abc",
    f"rediss://user:{SECRET}@h:6379/abc",
    f"redis://user:{SECRET}@h:99999/0",
    f"redis://:{SECRET}@[::1/0",
    f"redis://:{SECRET[:4]}/{SECRET[4:]}@h:6379/0x",  # a raw / in the password
    f"redis+sentinel://:{SECRET}@h:26379/m/x?sentinel_password={SENTINEL_SECRET}",
    f"redis+sentinel://:{SECRET}@h:26379?sentinel_password={SENTINEL_SECRET}",
    f"redis+sentinel://:{SECRET}@h:26379/m?sentinel_password={SENTINEL_SECRET}&x=1",
    f"redis+sentinel://:{SECRET}@h/m?sentinel_password={SENTINEL_SECRET}",
    f"redis+cluster://:{SECRET[:4]}/{SECRET[4:]}@h:7000",  # a raw / again
    f"redis+cluster://:{SECRET}@h:7000/3",
    f"redis+cluster://:{SECRET}@h:notaport",
    f"sentinel://:{SECRET}@h:26379/m",
    f"redis://:{SECRET}@h:6379/0?password={SENTINEL_SECRET}&db=x",
]


@pytest.mark.parametrize("url", MALFORMED_WITH_SECRETS)
def test_a_bad_redis_url_is_refused_without_echoing_a_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    message = str(info.value)
    for fragment in (SECRET, SENTINEL_SECRET, SECRET[:4], SECRET[4:], SENTINEL_SECRET[4:]):
        assert fragment not in message
    assert "***" in message or "is not a Redis URL" in message


@pytest.mark.parametrize("url", [MALFORMED_WITH_SECRETS[i] for i in (1, 4, 5)])
def test_start_up_refuses_a_bad_redis_url_naming_it_without_its_password(tmp_path: Path, url: str) -> None:
    done = subprocess.run(
        [sys.executable, "app.py", "--redis-url", url, "--cache-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--redis-url" in done.stderr and SECRET not in done.stderr and SENTINEL_SECRET not in done.stderr


# -- Sentinel: failover under load ---------------------------------------------------


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    yield group
    group.stop()


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, sentinel: SentinelGroup
) -> Iterator[tuple[Server, Server]]:
    with replica_pair(tmp_path_factory.mktemp("sentinel-replicas"), "--redis-url", sentinel.url) as pair:
        yield pair


def body(prompt: str) -> dict[str, object]:
    return {"prompt": prompt, "width": 64, "height": 64, "seed": 7, "steps": 2}


def test_replicas_share_images_through_the_sentinel_master(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    info = a.client.get("/api/info").json()
    assert info["cache"]["redis"]["kind"] == "sentinel"
    made = a.client.post("/generate", json=body("a watchtower"))
    assert made.headers["x-cache"] == "miss"
    elsewhere = b.client.post("/generate", json=body("a watchtower"))
    assert (elsewhere.headers["x-cache"], elsewhere.content) == ("redis", made.content)


def test_a_failover_under_load_loses_no_answered_image(
    replicas: tuple[Server, Server], sentinel: SentinelGroup
) -> None:
    a, b = replicas
    stop, lock = threading.Event(), threading.Lock()
    answered: list[tuple[Server, str, int, bytes, str]] = []  # replica, prompt, status, bytes, key

    def client(server: Server, worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            prompt = f"a watchtower in the gale {worker} {i}"
            resp = server.client.post("/generate", json=body(prompt))
            with lock:
                answered.append(
                    (server, prompt, resp.status_code, resp.content, resp.headers.get("x-key", ""))
                )

    workers = [threading.Thread(target=client, args=(s, w)) for w, s in enumerate((a, b, a, b))]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: len(answered) >= 8, "images answered before the failover", timeout_s=60)
        old_master = sentinel.master_port()
        new_master = sentinel.failover()  # the replica is promoted, mid-load
        failed_over_at = len(answered)
        wait_until(
            lambda: len(answered) >= failed_over_at + 8, "images answered after the failover", timeout_s=60
        )
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    sentinel.wait_demoted(old_master)
    assert new_master != old_master
    # The service kept answering through the failover.
    assert [status for _, _, status, _, _ in answered] == [200] * len(answered)

    # Both replicas now write to the new master (a write to the old one, now read-only,
    # fails, and redis-py asks the sentinels again): one's image is the other's Redis hit.
    rounds = itertools.count(1)

    def shared_through_the_new_master() -> bool:
        n = next(rounds)
        made = a.client.post("/generate", json=body(f"after the failover {n}"))
        hit = b.client.post("/generate", json=body(f"after the failover {n}")).headers["x-cache"]
        return hit == "redis" and bool(
            sentinel.node(new_master).exists(
                f"zimage:v{SCHEMA_VERSION}:unsigned:public:{made.headers['x-key']}"
            )
        )

    wait_until(shared_through_the_new_master, "the replicas to reach the new master", timeout_s=90)

    # Every answered image is still served by the replica that made it (its disk), and
    # the other replica finds it through the new master or, where the failover lost
    # the Redis copy (written to the old master after the promotion), makes it again
    # bit for bit: the key is the request.
    fetched = regenerated = 0
    for server, prompt, _, image, key in answered:
        assert server.client.get(f"/images/{key}.png").content == image
        other = b if server is a else a
        stored = other.client.get(f"/images/{key}.png")
        if stored.status_code == 200:
            assert stored.content == image
            fetched += 1
        else:
            assert stored.status_code == 404
            again = other.client.post("/generate", json=body(prompt))
            assert again.headers["x-key"] == key and again.content == image
            regenerated += 1
    assert fetched > 0
    errors = sum(s.client.get("/api/cache/stats").json()["tiers"]["redis"]["errors"] for s in (a, b))
    print(
        f"\nfailover under load: {len(answered)} images answered, {fetched} fetched after it, "
        f"{regenerated} lost from Redis and regenerated identically; {errors} Redis errors counted"
    )


def test_the_tier_follows_a_failover_when_the_sentinels_announce_it(sentinel: SentinelGroup) -> None:
    tier = RedisTier(sentinel.url, ttl_s=60)
    try:
        tier.put("public", make_key({"before": 1}), ENTRY)  # one connection, to the master
        old_master = sentinel.master_port()
        new_master = sentinel.failover()
        # One thread, so redis-py would keep its connection to the old master, which
        # takes writes (and later loses them) until the sentinels demote it, up to
        # 10 s on, and close its clients. The tier hears `+switch-master` and moves
        # at once: its writes reach the new master while the old is not yet demoted.
        written: list[str] = []

        def reached_the_new_master() -> bool:
            written.append(make_key({"after": time.monotonic()}))
            tier.put("public", written[-1], ENTRY)
            return bool(sentinel.node(new_master).exists(tier.redis_key("public", written[-1])))

        wait_until(reached_the_new_master, "the tier to reach the new master", timeout_s=30)
        key = written[-1]
        role = sentinel.node(old_master).info("replication")["role"]
        assert role == "master", "the tier wrote to the old master until the sentinels demoted it"
        assert tier.get("public", key) == ENTRY
    finally:
        tier.close()


# -- Cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterGroup]:
    group = ClusterGroup(tmp_path_factory.mktemp("cluster")).start()
    yield group
    group.stop()


def test_the_tier_works_on_a_redis_cluster(cluster: ClusterGroup) -> None:
    tier, other = RedisTier(cluster.url, ttl_s=60), RedisTier(cluster.url, ttl_s=60)
    keys = [make_key({"cluster": i}) for i in range(30)]  # spread over the three nodes' slots
    for key in keys:
        tier.put("public", key, ENTRY)
    assert all(other.get("public", key) == ENTRY for key in keys)

    async def on_the_loop() -> list[object]:
        cache = LayeredCache([MemoryTier(1 << 20), other])
        return [await cache.aget("public", key) for key in keys]

    assert asyncio.run(on_the_loop()) == [Hit(ENTRY, "redis")] * len(keys)
    stats = tier.stats()  # a SCAN over every node
    assert stats["entries"] == 30 and stats["bytes"] > 30 * len(ENTRY.data)
    # The generation lock: one holder across "replicas", token-checked.
    lease = tier.try_lock("public", keys[0])
    assert lease is not None and other.try_lock("public", keys[0]) is None
    assert other.lock_held("public", keys[0]) and lease.refresh()
    lease.release()
    assert not other.lock_held("public", keys[0])
    # clear deletes keys of many slots (redis-py splits the DEL by slot).
    assert tier.clear("public") == 30
    assert other.stats()["entries"] == 0


def test_a_cluster_that_cannot_be_reached_is_a_miss_with_back_off() -> None:
    tier = RedisTier("redis+cluster://127.0.0.1:1,127.0.0.1:2", ttl_s=60)  # connects on first use
    cache = LayeredCache([MemoryTier(1 << 20), tier])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: cache.get("public", "d" * 64), range(40)))
    assert all(r is MISS for r in results)
    assert 1 <= cache.stats()["redis"]["errors"] < 10  # the back-off skipped the rest
    with pytest.raises(TierUnavailable):
        tier.try_lock("public", "d" * 64)
