"""Two server processes sharing one real redis-server: the shared tier, single flight
across replicas, namespaces, do-not-cache prompts, and surviving a Redis outage."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.procs import wait_until
from cache import SCHEMA_VERSION
from tests.conftest import RedisServer, Server, generations, replica_pair

SECRET = "classified falcon"


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis_srv: RedisServer
) -> Iterator[tuple[Server, Server]]:
    root = tmp_path_factory.mktemp("replicas")
    patterns = root / "no-cache.txt"
    patterns.write_text("# prompts we must never keep\nclassified\\s+\\w+\n")
    with replica_pair(root, "--redis-url", redis_srv.url, "--no-cache-patterns", str(patterns)) as pair:
        yield pair


def gen(server: Server, prompt: str, *, namespace: str = "public", **fields: object):
    body = {"prompt": prompt, "width": 64, "height": 64, "seed": 1, "steps": 8, **fields}
    resp = server.client.post("/generate", json=body, headers={"X-Namespace": namespace})
    assert resp.status_code == 200, resp.text
    return resp


def wait_shared_through_redis(maker: Server, taker: Server, prompt: str) -> None:
    """Wait until an image `maker` makes (a new one each try) is a Redis hit on `taker`:
    both replicas' Redis tiers are connected again."""
    tries = itertools.count(1)

    def shared() -> bool:
        n = next(tries)
        gen(maker, f"{prompt} {n}")
        return gen(taker, f"{prompt} {n}").headers["x-cache"] == "redis"

    wait_until(shared, "the replicas to reconnect to Redis", timeout_s=30, interval_s=0.5)


def test_an_image_made_on_one_replica_is_a_redis_hit_on_the_other(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    made = gen(a, "a shared harbour")
    assert made.headers["x-cache"] == "miss"
    elsewhere = gen(b, "a shared harbour")
    assert elsewhere.headers["x-cache"] == "redis"
    assert elsewhere.content == made.content
    assert gen(b, "a shared harbour").headers["x-cache"] == "memory"  # promoted
    stats = b.client.get("/api/cache/stats").json()
    assert stats["tiers"]["redis"]["hits"] >= 1
    assert stats["tiers"]["redis"]["entries"] >= 1


def test_twelve_concurrent_identical_requests_across_replicas_generate_once(
    replicas: tuple[Server, Server],
) -> None:
    a, b = replicas
    before = generations(a, b)
    with ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(lambda i: gen((a, b)[i % 2], "a crowded harbour", width=1024, height=1024), range(12))
        )
    assert generations(a, b) - before == 1
    assert len({r.content for r in responses}) == 1
    tiers = sorted(r.headers["x-cache"] for r in responses)
    assert set(tiers) <= {"miss", "redis", "memory"}
    assert "redis" in tiers  # the other replica waited for the shared result


def test_namespaces_never_share_entries(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    alice = gen(a, "a private harbour", namespace="alice")
    assert alice.headers["x-cache"] == "miss"
    bob = gen(b, "a private harbour", namespace="bob")
    assert bob.headers["x-cache"] == "miss"  # same key, other namespace: not served
    assert gen(b, "a private harbour", namespace="alice").headers["x-cache"] == "redis"
    key = alice.headers["x-key"]
    assert a.client.get(f"/images/{key}.png", headers={"X-Namespace": "alice"}).status_code == 200
    assert a.client.get(f"/images/{key}.png", headers={"X-Namespace": "carol"}).status_code == 404
    bad = a.client.get("/run", params={"prompt": "x"}, headers={"X-Namespace": "../etc"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["header", "x-namespace"]


def test_do_not_cache_prompts_are_never_stored_or_logged(
    replicas: tuple[Server, Server], redis_srv: RedisServer
) -> None:
    a, b = replicas
    first = gen(a, f"the {SECRET} at dawn")
    second = gen(a, f"the {SECRET} at dawn")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("bypass", "bypass")
    run = a.client.get("/run", params={"prompt": f"the {SECRET} at noon", "width": 64, "height": 64}).json()
    assert run["cache"] == "bypass" and run["image_url"] is None
    key = first.headers["x-key"]
    assert a.client.get(f"/images/{key}.png").status_code == 404
    assert not redis_srv.client().exists(f"zimage:v{SCHEMA_VERSION}:unsigned:public:{key}")
    assert not list(Path(a.cache_dir / "images").rglob(key))
    for server in (a, b):
        assert SECRET not in server.log_path.read_text()
    assert "prompt=<redacted>" in a.log_path.read_text()


def test_a_replica_stops_waiting_for_another_when_its_client_disconnects(
    replicas: tuple[Server, Server], redis_srv: RedisServer
) -> None:
    a, _ = replicas
    params = {"prompt": "a harbour nobody waits for", "width": 64, "height": 64}
    key = a.client.get("/run", params={**params, "no_cache": True}).json()["key"]
    before = generations(a)
    lock = f"zimage:v{SCHEMA_VERSION}:unsigned:public:{key}:lock"
    # Another replica's lock: a string with at most the lock TTL (30 s) left; one with
    # more is foreign and ignored (test_service's planted-lock test).
    redis_srv.client().set(lock, "another replica, making it", px=30_000)
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
            httpx.get(f"{a.url}/run", params=params, timeout=1.5)
        wait_until(
            lambda: "stopped waiting for another replica's image: its callers left" in a.log(),
            "the server to stop polling Redis for a client that left",
            timeout_s=30,
            interval_s=0.2,
        )
        assert generations(a) == before  # it waited for the other replica, then for nobody
    finally:
        redis_srv.client().delete(lock)


def test_replicas_keep_answering_while_redis_is_down_and_reconnect(
    replicas: tuple[Server, Server], redis_srv: RedisServer
) -> None:
    a, b = replicas
    cached = gen(a, "a harbour before the storm")
    redis_srv.kill()
    statuses = []
    for i in range(6):
        for server in (a, b):
            statuses.append(gen(server, "a harbour before the storm").status_code)  # hits
            statuses.append(gen(server, f"a harbour in the storm {i}").status_code)  # misses
    assert statuses == [200] * 24
    assert gen(a, "a harbour before the storm").content == cached.content
    errors = sum(s.client.get("/api/cache/stats").json()["tiers"]["redis"]["errors"] for s in (a, b))
    assert errors >= 2
    for server in (a, b):
        assert server.client.get("/health").status_code == 200

    redis_srv.start()  # same port: the tiers reconnect by themselves
    wait_shared_through_redis(a, b, "a harbour after the storm")


def test_redis_killed_and_restarted_under_load_costs_no_request(
    replicas: tuple[Server, Server], redis_srv: RedisServer
) -> None:
    import threading

    a, b = replicas
    stop, statuses, lock = threading.Event(), [], threading.Lock()

    def client(server: Server, worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            prompt = "a lighthouse in the gale" if i % 2 else f"gale {worker} {i}"  # hits and misses
            body = {"prompt": prompt, "width": 64, "height": 64, "seed": 1, "steps": 2}
            resp = server.client.post("/generate", json=body)
            with lock:
                statuses.append(resp.status_code)

    workers = [threading.Thread(target=client, args=(s, w)) for w, s in enumerate((a, b, a, b))]
    for w in workers:
        w.start()

    def answered_after(count: int, more: int) -> int:
        # Progress is counted in answers, not seconds: a slow machine only takes longer.
        wait_until(lambda: len(statuses) >= count + more, f"{more} more answers", timeout_s=90)
        return len(statuses)

    before_outage = answered_after(0, 8)
    redis_srv.kill()  # mid-load
    during_outage = answered_after(before_outage, 8)
    redis_srv.start()
    answered_after(during_outage, 8)
    stop.set()
    for w in workers:
        w.join(60)
    assert set(statuses) == {200}, sorted(set(statuses))
    errors = sum(s.client.get("/api/cache/stats").json()["tiers"]["redis"]["errors"] for s in (a, b))
    assert errors >= 1  # the outage was seen and counted, and cost no request
    # Reconnected: an image made on one replica now is a Redis hit on the other.
    wait_shared_through_redis(b, a, "after the gale")
