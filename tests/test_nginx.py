"""Two replicas and one real Redis behind a real nginx running deploy/nginx/z-image-turbo.conf:
Gradio sessions keep to one replica, the replicas share images and generations, nginx
keeps only what the service marks public, and a replica dying under load costs only
the POSTs that were on it."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from bench.procs import kill_process, wait_until
from tests.conftest import RedisServer, Server, generations, replica_pair
from tests.nginx_proc import Nginx


@dataclass
class Stack:
    nginx: Nginx
    a: Server
    b: Server
    http: httpx.Client

    @staticmethod
    def addr(server: Server) -> str:
        return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("nginx-stack")
    redis = RedisServer(root).start()
    try:
        with replica_pair(root, "--redis-url", redis.url) as (a, b):
            nginx = Nginx(root / "nginx", [Stack.addr(a), Stack.addr(b)]).start()
            try:
                with httpx.Client(base_url=nginx.url, timeout=120) as http:
                    yield Stack(nginx, a, b, http)
            finally:
                nginx.stop()
    finally:
        redis.kill()


def body(prompt: str, **fields: object) -> dict[str, object]:
    return {"prompt": prompt, "width": 64, "height": 64, "seed": 1, "steps": 2, **fields}


def cookies_by_replica(stack: Stack, per_replica: int) -> dict[str, list[str]]:
    """Affinity cookie values that nginx sends to each replica (asked through /config)."""
    found: dict[str, list[str]] = {Stack.addr(stack.a): [], Stack.addr(stack.b): []}
    for i in range(64):
        cookie = f"probe-{i}"
        assert stack.http.get("/config", headers={"Cookie": f"zimage_affinity={cookie}"}).status_code == 200
        (line,) = [x for x in stack.nginx.log() if x.affinity == cookie]
        if len(found[line.upstreams[0]]) < per_replica:
            found[line.upstreams[0]].append(cookie)
        if all(len(v) == per_replica for v in found.values()):
            return found
    raise AssertionError(f"64 cookies did not reach both replicas: {found}")


def test_shipped_config_passes_nginx_t(stack: Stack) -> None:
    assert "test is successful" in stack.nginx.check()


def test_gradio_sessions_through_nginx_each_stay_on_one_replica(stack: Stack) -> None:
    preset = cookies_by_replica(stack, per_replica=4)
    sessions: list[str | None] = [c for cookies in preset.values() for c in cookies] + [None, None]

    def session(i: int, cookie: str | None) -> tuple[str, bytes]:
        kwargs = {"httpx_kwargs": {"cookies": {"zimage_affinity": cookie}}} if cookie else {}
        client = Client(stack.nginx.url, verbose=False, **kwargs)  # type: ignore[arg-type]
        try:
            gallery, status, _ = client.predict(**body(f"a keeper of lighthouse {i}"), api_name="/generate")
            assert status.startswith("miss"), status
            return client.cookies["zimage_affinity"], Path(gallery[0]["image"]).read_bytes()
        finally:
            client.close()

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(session, range(len(sessions)), sessions))

    # Every session got its image, and the bytes are the ones the API serves.
    for i, (_, image) in enumerate(results):
        api = stack.http.post("/generate", json=body(f"a keeper of lighthouse {i}"))
        assert api.headers["x-cache"] in ("memory", "disk", "redis")
        assert api.content == image
    # The two sessions without a cookie were given one by nginx ($request_id).
    given = [
        cookie for (cookie, _), preset_cookie in zip(results, sessions, strict=True) if not preset_cookie
    ]
    assert all(len(c) == 32 and int(c, 16) >= 0 for c in given)
    # Each session's requests (config, queue/join, the SSE queue/data, the file) went to
    # one replica, the one its cookie hashes to; the sessions used both replicas.
    by_cookie: dict[str, list] = defaultdict(list)
    for line in stack.nginx.log():
        by_cookie[line.affinity].append(line)
    used = set()
    for cookie, _ in results:
        lines = [x for x in by_cookie[cookie] if x.uri != "/config" or not cookie.startswith("probe-")]
        uris = Counter(x.uri.rsplit("/", 1)[-1] if "/queue/" in x.uri else x.uri for x in lines)
        assert uris["join"] == 1 and uris["data"] == 1, uris
        assert any(x.uri.startswith("/gradio_api/file=") for x in lines)
        replicas = {x.upstreams[-1] for x in lines}
        assert len(replicas) == 1, (cookie, replicas)
        assert all(x.status == 200 for x in lines if "/queue/" in x.uri)
        used |= replicas
    for upstream, cookies in preset.items():
        assert all({x.upstreams[-1] for x in by_cookie[c]} == {upstream} for c in cookies)
    assert used == {Stack.addr(stack.a), Stack.addr(stack.b)}


def test_an_image_made_through_one_replica_is_a_redis_hit_on_the_other(stack: Stack) -> None:
    before = {s: generations(s) for s in (stack.a, stack.b)}
    made = stack.http.post("/generate", json=body("a harbour at dusk"))
    assert made.status_code == 200 and made.headers["x-cache"] == "miss"
    (owner,) = [s for s in (stack.a, stack.b) if generations(s) > before[s]]
    other = stack.b if owner is stack.a else stack.a
    direct = other.client.post("/generate", json=body("a harbour at dusk"))
    assert direct.headers["x-cache"] == "redis"
    assert direct.content == made.content
    assert owner.client.post("/generate", json=body("a harbour at dusk")).headers["x-cache"] == "memory"


def test_urls_made_behind_nginx_on_another_port_keep_its_port(stack: Stack) -> None:
    # nginx listens on a free port, never 80: `$host` dropped it from every URL made.
    made = stack.http.post(
        "/v1/images/generations", json={"prompt": "a port", "size": "64x64", "response_format": "url"}
    )
    url = made.json()["data"][0]["url"]
    assert url.startswith(f"{stack.nginx.url}/images/"), url
    assert stack.http.get(url).status_code == 200
    root = stack.http.get("/config").json()["root"]  # Gradio's, for the UI's images and the JS client
    assert root.rstrip("/") == stack.nginx.url, root
    # An HTTP/1.0 client may send no Host: nginx passes its server_name, not an empty
    # header the replicas would refuse with 400.
    with socket.create_connection(("127.0.0.1", stack.nginx.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_nginx_keeps_only_images_the_service_marks_public(stack: Stack) -> None:
    made = stack.http.post("/generate", json=body("a cached lantern"))
    url = f"/images/{made.headers['x-key']}.png"
    first, second = stack.http.get(url), stack.http.get(url)
    assert first.headers["cache-control"].startswith("public")
    assert (first.headers["x-proxy-cache"], second.headers["x-proxy-cache"]) == ("MISS", "HIT")
    assert first.content == second.content == made.content
    # Credentials: never answered from the shared cache, nor stored in it.
    authed = stack.http.get(url, headers={"Authorization": "Bearer someone"})
    assert authed.headers["x-proxy-cache"] == "BYPASS"
    # Another namespace is another cache key, and the service's 404 (no Cache-Control)
    # is not kept: once the image exists there, nginx serves it.
    other_ns = {"X-Namespace": "harbour-team"}
    assert stack.http.get(url, headers=other_ns).status_code == 404
    assert stack.http.get(url, headers=other_ns).headers["x-proxy-cache"] == "MISS"
    stack.http.post("/generate", json=body("a cached lantern"), headers=other_ns)
    # There the service says `private` (not everyone's image), and nginx keeps nothing.
    mine = [stack.http.get(url, headers=other_ns) for _ in range(2)]
    assert [r.status_code for r in mine] == [200, 200]
    assert mine[0].headers["cache-control"].startswith("private")
    assert [r.headers["x-proxy-cache"] for r in mine] == ["MISS", "MISS"]


def test_twelve_identical_concurrent_requests_through_nginx_generate_once(stack: Stack) -> None:
    before = generations(stack.a, stack.b)
    logged = len(stack.nginx.log())
    request = body("a crowded quay", width=256, height=256, steps=8)
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: stack.http.post("/generate", json=request), range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    assert len({r.content for r in responses}) == 1
    assert generations(stack.a, stack.b) - before == 1
    served_by = {x.upstreams[-1] for x in stack.nginx.log()[logged:] if x.uri == "/generate"}
    assert served_by == {Stack.addr(stack.a), Stack.addr(stack.b)}  # least_conn used both


def pending_requests(port: int) -> int:
    """Connections to `port` on loopback holding request bytes its process has not read."""
    local = f"0100007F:{port:04X}"
    count = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        rx_queue = int(fields[4].split(":")[1], 16)
        if fields[1] == local and fields[3] == "01" and rx_queue > 0:
            count += 1
    return count


def test_a_replica_dying_under_load_costs_only_the_posts_it_held(stack: Stack) -> None:
    victim, survivor = stack.b, stack.a
    api = ("/run", "/generate")
    logged = len(stack.nginx.wait_logged(0, api))
    stop, go, lock = threading.Event(), threading.Event(), threading.Lock()
    done: list[tuple[str, int]] = []
    in_flight = [0]

    def worker(n: int, method: str) -> None:
        with httpx.Client(base_url=stack.nginx.url, timeout=120) as http:
            i = 0
            while go.wait() and not stop.is_set():
                i += 1
                fields = body(f"a quay under load {n} {i}")
                with lock:
                    in_flight[0] += 1
                if method == "GET":
                    resp = http.get("/run", params=fields)
                else:
                    resp = http.post("/generate", json=fields)
                with lock:
                    in_flight[0] -= 1
                    done.append((method, resp.status_code))

    # Eight clients GET, two POST: once three requests wait on the victim, at least
    # one of them is a GET.
    workers = [threading.Thread(target=worker, args=(n, "GET" if n < 8 else "POST")) for n in range(10)]
    go.set()
    for w in workers:
        w.start()
    try:
        wait_until(lambda: len(done) >= 10, "load to reach the replicas", timeout_s=90)
        # The victim hangs: new requests pile up on it unread (in its socket buffers)...
        go.clear()
        wait_until(lambda: in_flight[0] == 0, "the clients to pause", timeout_s=90)
        os.kill(victim.proc.pid, signal.SIGSTOP)
        go.set()
        wait_until(
            lambda: pending_requests(victim.port) >= 3, "requests to reach the hung replica", timeout_s=90
        )
        # ... and dies with them, while the load goes on.
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        killed_at = len(done)
        wait_until(lambda: len(done) >= killed_at + 12, "the survivor to answer on", timeout_s=90)
    finally:
        stop.set()
        go.set()
        kill_process(victim.proc)  # never leave it hung, holding the clients' requests
        for w in workers:
            w.join(120)

    statuses = Counter(done)
    lines = stack.nginx.wait_logged(logged + len(done), api)[logged:]
    dead, alive = Stack.addr(victim), Stack.addr(survivor)
    failed = [x for x in lines if x.status != 200]
    retried = [x for x in lines if x.upstreams[:1] == [dead] and len(x.upstreams) == 2]
    # The only errors: 502 for POSTs that had reached the victim (nginx resends no POST).
    assert all(x.status == 502 and x.method == "POST" and x.upstreams == [dead] for x in failed), failed
    assert statuses[("GET", 200)] + statuses[("POST", 200)] + len(failed) == len(done)
    # GETs the victim held were answered by the survivor; so was every later request.
    retried_gets = [x for x in retried if x.method == "GET"]
    assert retried_gets and all(x.status == 200 and x.upstreams[1] == alive for x in retried_gets)
    assert all(x.status == 200 for x in retried)
    print(
        f"\nreplica killed under load: {len(done)} requests, {len(failed)} POSTs lost with it (502), "
        f"{len(retried_gets)} GETs and {len(retried) - len(retried_gets)} unsent POSTs retried on the survivor"
    )
