"""API keys, the admin token, the bounded queue, batches, metrics and /api/info,
against real server processes."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import httpx
import pytest
from gradio_client import Client

from bench.procs import wait_until
from tests.conftest import Server, wait_generating

ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789ab", "admin-token-0123456789"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("restricted")
    keys = root / "api-keys.txt"
    keys.write_text(f"# token namespace\n{ALICE} alice\n{BOB} bob\n")
    srv = Server(
        root / "cache", "--api-keys", str(keys), "--admin-token", ADMIN, "--max-queue", "1"
    ).wait_ready()
    yield srv
    srv.stop()


def test_api_routes_need_a_token_and_health_does_not(restricted: Server) -> None:
    c = restricted.client
    for method, path, kw in [
        ("GET", "/run", {"params": {"prompt": "x"}}),
        ("POST", "/generate", {"json": {"prompt": "x"}}),
        ("POST", "/api/generate", {"json": {"prompt": "x"}}),
        ("GET", f"/images/{'a' * 64}.png", {}),
        ("GET", "/api/cache/stats", {}),
        ("GET", "/api/info", {}),
    ]:
        resp = c.request(method, path, **kw)
        assert resp.status_code == 401, (path, resp.text)
        assert resp.headers["www-authenticate"] == "Bearer"
        assert c.request(method, path, headers=auth("wrong-token-0123456789"), **kw).status_code == 401
    for path in ("/health", "/ready", "/metrics"):
        assert c.get(path).status_code == 200
    # The token is checked before the input: a caller without one learns nothing else.
    assert c.get("/run", params={"prompt": "x", "seed": "many"}).status_code == 401
    assert c.post("/generate", params={"no_cache": "maybe"}, json={"prompt": ""}).status_code == 401


def test_the_token_decides_the_namespace(restricted: Server) -> None:
    c = restricted.client
    body = {"prompt": "a keyed lighthouse", "width": 64, "height": 64}
    alice = c.post("/generate", json=body, headers=auth(ALICE))
    assert alice.headers["x-cache"] == "miss"
    url = f"/images/{alice.headers['x-key']}.png"
    assert c.get(url, headers=auth(ALICE)).content == alice.content
    assert c.get(url, headers=auth(BOB)).status_code == 404  # same key, not bob's entry
    assert c.post("/generate", json=body, headers=auth(ALICE)).headers["x-cache"] == "memory"
    assert c.post("/generate", json=body, headers=auth(BOB)).headers["x-cache"] == "miss"
    other = c.post("/generate", json=body, headers={**auth(BOB), "X-Namespace": "alice"})
    assert other.status_code == 403
    assert "namespace 'bob'" in other.json()["detail"]


def test_clearing_a_namespace_needs_the_admin_token(restricted: Server) -> None:
    c = restricted.client
    made = c.post(
        "/generate", json={"prompt": "a doomed lighthouse", "width": 64, "height": 64}, headers=auth(BOB)
    )
    assert c.delete("/api/cache", params={"namespace": "bob"}).status_code == 401
    assert c.delete("/api/cache", params={"namespace": "bob"}, headers=auth(BOB)).status_code == 403
    resp = c.delete("/api/cache", params={"namespace": "bob"}, headers=auth(ADMIN))
    assert resp.status_code == 200
    removed = resp.json()["removed"]
    assert removed["memory"] >= 1 and removed["disk"] >= 1
    assert c.get(f"/images/{made.headers['x-key']}.png", headers=auth(BOB)).status_code == 404
    assert c.delete("/api/cache", params={"namespace": "../x"}, headers=auth(ADMIN)).status_code == 422


def test_admin_routes_are_off_without_an_admin_token(server: Server) -> None:
    resp = server.client.delete("/api/cache", params={"namespace": "public"}, headers=auth(ADMIN))
    assert resp.status_code == 403
    assert "--admin-token" in resp.json()["detail"]


def test_ui_login_with_namespace_and_token(restricted: Server) -> None:
    with pytest.raises(Exception, match=r"(?i)login|auth|credentials"):
        Client(restricted.url, auth=("alice", BOB), verbose=False)
    client = Client(restricted.url, auth=("alice", ALICE), verbose=False)
    try:
        _, status, _ = client.predict(prompt="a keyed lighthouse", width=64, height=64, api_name="/generate")
        assert status.startswith("memory hit")  # alice's entry, made through the API above
    finally:
        client.close()


def test_past_max_queue_the_api_answers_503_with_retry_after(restricted: Server) -> None:
    c = restricted.client
    statuses: dict[int, httpx.Response] = {}

    def slow(i: int) -> None:
        statuses[i] = c.post(
            "/generate",
            json={"prompt": f"a queued lighthouse {i}", "width": 1024, "height": 1024},
            headers=auth(ALICE),
        )

    def info() -> dict:
        return c.get("/api/info", headers=auth(ALICE)).json()

    def generations() -> int:
        return c.get("/api/cache/stats", headers=auth(ALICE)).json()["generations"]

    before = generations()
    running = threading.Thread(target=slow, args=(0,))
    running.start()
    wait_generating(c, before, "the first generation to start", headers=auth(ALICE))
    waiting = threading.Thread(target=slow, args=(1,))
    waiting.start()
    wait_until(lambda: info()["queue"]["waiting"] >= 1, "the second to wait in the queue", timeout_s=30)
    refused = c.post(
        "/generate", json={"prompt": "one too many", "width": 64, "height": 64}, headers=auth(ALICE)
    )
    running.join()
    waiting.join()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "queue is full" in refused.json()["detail"]
    assert statuses[0].status_code == statuses[1].status_code == 200
    hit = c.post(
        "/generate",
        json={"prompt": "a queued lighthouse 0", "width": 1024, "height": 1024},
        headers=auth(ALICE),
    )
    assert hit.headers["x-cache"] == "memory"


def test_batch_images_get_consecutive_seeds_or_each_a_drawn_one(server: Server) -> None:
    body = {"prompt": "a batch of boats", "width": 64, "height": 64, "seed": 500}
    server.client.post("/generate", json=body)  # seed 500 is cached
    resp = server.client.post("/api/generate", json={**body, "batch_size": 4})
    assert resp.status_code == 200
    images = resp.json()["images"]
    assert [i["seed"] for i in images] == [500, 501, 502, 503]
    assert [i["cache"] for i in images] == ["memory", "miss", "miss", "miss"]
    assert len({i["key"] for i in images}) == 4
    fetched = {server.client.get(i["image_url"]).content for i in images}
    assert len(fetched) == 4
    drawn = server.client.post("/api/generate", json={**body, "seed": -1, "batch_size": 3}).json()["images"]
    assert len({i["seed"] for i in drawn}) == 3
    top = server.client.post("/api/generate", json={**body, "seed": 2**32 - 1, "batch_size": 2}).json()[
        "images"
    ]
    assert [i["seed"] for i in top] == [2**32 - 1, 0]
    for size in (0, 9):
        bad = server.client.post("/api/generate", json={**body, "batch_size": size})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "batch_size"


def test_each_image_of_a_mixed_batch_reports_its_own_duration(server: Server) -> None:
    body = {"prompt": "a batch of timed boats", "width": 64, "height": 64, "seed": 700}
    server.client.post("/generate", json=body)  # seed 700 is cached
    before = server.client.get("/api/cache/stats").json()["latency"]["hit"]["count"]
    resp = server.client.post("/api/generate", json={**body, "batch_size": 3})
    images = resp.json()["images"]
    assert [i["cache"] for i in images] == ["memory", "miss", "miss"]
    hit, misses = images[0]["duration"], [i["duration"] for i in images[1:]]
    # The hit was there after its lookup, before the misses' generation began; the
    # response's duration is the slowest image's.
    assert 0 < hit < min(misses) and resp.json()["duration"] == max(misses)
    after = server.client.get("/api/cache/stats").json()["latency"]["hit"]
    assert after["count"] == before + 1


def test_metrics_expose_the_documented_names(server: Server) -> None:
    server.client.get("/run", params={"prompt": "a metric", "width": 64, "height": 64})
    server.client.get("/run", params={"prompt": "a metric", "width": 64, "height": 64})
    text = server.client.get("/metrics").text
    for name in [
        'zimage_requests_total{tier="miss"}',
        'zimage_requests_total{tier="memory"}',
        "zimage_generations_total",
        "zimage_generated_images_total",
        "zimage_generation_seconds_bucket",
        'zimage_hit_seconds_bucket{le="0.001",tier="memory"}',
        "zimage_queue_depth",
        "zimage_model_ready 1.0",
        'zimage_cache_entries{tier="disk"}',
        'zimage_cache_bytes{tier="memory"}',
        'zimage_cache_errors_total{tier="disk"}',
        "zimage_embedding_cache_hits_total",
    ]:
        assert name in text, name
    assert int(float(re.search(r'zimage_requests_total\{tier="memory"\} (\S+)', text).group(1))) >= 1


def test_api_info_describes_versions_model_and_cache(server: Server) -> None:
    info = server.client.get("/api/info").json()
    assert info["versions"]["diffusers"] == "0.42.1"
    assert info["model"]["id"].startswith("tiny-z-image")
    assert info["model"]["fingerprint"].startswith("sha256:")
    assert (info["model"]["device"], info["model"]["dtype"], info["model"]["demo"]) == (
        "cpu",
        "float32",
        True,
    )
    assert info["cache"]["memory_mb"] == 512
    assert info["cache"]["disk"]["max_bytes"] == 20 * 2**30
    assert info["cache"]["redis"]["enabled"] is False
    assert info["queue"]["max"] == 64
    assert info["speed"] == {"compile": "auto", "attention_backend": "auto"}
    assert (info["model"]["attention"], info["model"]["compiled"]) == ("native", False)  # auto on the CPU
    assert info["model"]["quantize"] == "none" and info["model"]["placement"]["mode"] == "none"


def test_openapi_documents_every_field_with_its_limits(server: Server) -> None:
    schema = server.client.get("/openapi.json").json()["components"]["schemas"]["BatchRequest"]["properties"]
    assert schema["width"]["multipleOf"] == 16 and schema["width"]["maximum"] == 2048
    assert schema["steps"]["minimum"] == 1 and schema["steps"]["maximum"] == 50
    assert schema["batch_size"]["maximum"] == 8
    assert all(field.get("description") for field in schema.values())
    assert server.client.get("/docs").status_code == 200
