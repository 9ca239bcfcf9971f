"""Faults, hostile input and leaks: what must never lose, corrupt or expose what is stored."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipeline.tiny_model import ensure_tiny_model
from tests.conftest import ROOT, RedisServer, Server

SMALL = {"width": 128, "height": 128}


def cache_cli(cache_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache", "--cache-dir", str(cache_dir), "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def temp_files(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "images").rglob("*.tmp")]


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "a\x00b"}, "prompt"),
        ({"prompt": "a", "width": "wide"}, "width"),
        ({"prompt": "a", "width": 1000}, "width"),
        ({"prompt": "a", "height": 99999}, "height"),
        ({"prompt": "a", "seed": -2}, "seed"),
        ({"prompt": "a", "seed": 2**32}, "seed"),
        ({"prompt": "a", "seed": 10**30}, "seed"),
        ({"prompt": "a", "steps": 0}, "steps"),
        ({"prompt": "a", "unknown": 1}, "unknown"),
    ],
)
def test_bad_bodies_get_422_naming_the_field(server: Server, body: dict, field: str) -> None:
    resp = server.client.post("/generate", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_guidance_gets_422(server: Server, value: str) -> None:
    raw = '{"prompt": "a", "guidance_scale": ' + value + "}"
    resp = server.client.post("/generate", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][-1] == "guidance_scale"


@pytest.mark.parametrize(
    "prompt",
    ["🦊 一只狐狸 in the snow ❄️", "שועל אדום בשלג", "ثعلب أحمر في الثلج", "x" * 2000, "  \t spaced \n out  "],
)
def test_unusual_but_valid_prompts_generate_and_hit(server: Server, prompt: str) -> None:
    first = server.client.get("/run", params={"prompt": prompt, **SMALL})
    assert first.status_code == 200, first.text
    again = server.client.get("/run", params={"prompt": prompt, **SMALL})
    assert again.json()["cache"] == "memory" and again.json()["key"] == first.json()["key"]


def test_oversized_bodies_get_413_with_or_without_a_length(server: Server) -> None:
    big = json.dumps({"prompt": "a", "negative_prompt": "x" * 100_000})
    resp = server.client.post("/generate", content=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "request body over 65536 bytes" in resp.json()["detail"]

    def chunks():
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192].encode()

    chunked = server.client.post(
        "/api/generate", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    assert server.client.get("/health").status_code == 200


# -- leaks -----------------------------------------------------------------------------


def test_images_route_takes_only_hex_keys_of_the_callers_namespace(server: Server) -> None:
    made = server.client.get(
        "/run", params={"prompt": "tenant a's secret", **SMALL}, headers={"X-Namespace": "a"}
    )
    url = made.json()["image_url"]
    assert server.client.get(url, headers={"X-Namespace": "a"}).status_code == 200
    assert server.client.get(url, headers={"X-Namespace": "b"}).status_code == 404
    assert server.client.get(url).status_code == 404  # public
    for bad in (
        "../../../../etc/passwd",
        "..%2F..%2Fapp.py",
        "%2e%2e%2fapp.py",
        "ABC.png",
        "0" * 63 + ".png",
    ):
        resp = server.client.get(f"/images/{bad}", headers={"X-Namespace": "a"})
        assert resp.status_code == 404 and b"root:" not in resp.content
    # Tenant b asking for a's prompt gets its own generation, not a's entry.
    theirs = server.client.get(
        "/run", params={"prompt": "tenant a's secret", **SMALL}, headers={"X-Namespace": "b"}
    )
    assert theirs.json()["cache"] == "miss"
    # Nor can b learn by timing that a asked for it: b paid for a whole generation.
    again = server.client.get(
        "/run", params={"prompt": "tenant a's secret", **SMALL}, headers={"X-Namespace": "a"}
    )
    assert again.json()["cache"] == "memory" and theirs.json()["duration"] > 10 * again.json()["duration"]


def test_prompts_stay_out_of_the_log_unless_asked(tmp_path: Path) -> None:
    patterns = tmp_path / "private.txt"
    patterns.write_text("medical record\n")
    quiet = Server(tmp_path / "quiet").wait_ready()
    loud = Server(tmp_path / "loud", "--log-prompts", "--no-cache-patterns", str(patterns)).wait_ready()
    try:
        for srv in (quiet, loud):
            srv.client.get("/run", params={"prompt": "a lighthouse named Wilhelmina", **SMALL})
            srv.client.post("/generate", json={"prompt": "the medical record of Jane Roe", **SMALL})
        assert "generated 1 image(s) 128x128" in quiet.log()
        assert "Wilhelmina" not in quiet.log() and "Jane Roe" not in quiet.log()
        assert "'a lighthouse named Wilhelmina'" in loud.log()
        assert "Jane Roe" not in loud.log()  # a do-not-cache prompt, never logged
    finally:
        quiet.stop()
        loud.stop()


def test_a_tampered_redis_value_is_rejected_and_regenerated(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    srv = Server(tmp_path / "cache", "--memory-cache-mb", "0", "--redis-url", redis_server.url).wait_ready()
    try:
        made = srv.client.post("/generate", json={"prompt": "a tamper-proof vase", **SMALL})
        key = made.headers["x-key"]
        for path in (tmp_path / "cache" / "images").rglob(key):
            path.unlink()  # only Redis has it now
        client = redis_server.client()
        name = f"zimage:v1:public:{key}"
        value = bytearray(client.get(name))
        value[-100] ^= 0xFF  # one flipped byte in the image
        client.set(name, bytes(value))
        again = srv.client.post("/generate", json={"prompt": "a tamper-proof vase", **SMALL})
        assert again.headers["x-cache"] == "miss"  # rejected, regenerated
        assert again.content == made.content
        assert client.get(name) != bytes(value)  # replaced
        assert "redis cache: dropping corrupt entry" in srv.log()
    finally:
        srv.stop()


# -- faults ----------------------------------------------------------------------------


def test_a_model_that_fails_to_load_still_serves_hits(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(ensure_tiny_model(tmp_path / "models"), model)
    cache = tmp_path / "cache"
    srv = Server(cache, "--model", str(model)).wait_ready()
    params = {
        "prompt": "made before the weights broke",
        "width": 256,
        "height": 256,
    }  # a real model's minimum
    try:
        stored = srv.client.get("/run", params=params).json()
    finally:
        srv.stop()
    # Damage the transformer's weights without changing their size: the
    # fingerprint (name and size of large files) stays, so the cache still applies.
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(b"\xff" * size)

    broken = Server(cache, "--model", str(model))
    try:
        ready = broken.wait_model("failed").client.get("/ready")
        assert ready.status_code == 503 and ready.json()["reason"]
        assert broken.client.get("/health").json() == {"status": "ok", "model": "failed", "device": "cpu"}
        hit = broken.client.get("/run", params=params)
        assert hit.status_code == 200 and hit.json()["cache"] == "disk" and hit.json()["key"] == stored["key"]
        miss = broken.client.get("/run", params={**params, "seed": 1})
        assert miss.status_code == 503 and "the model failed" in miss.json()["detail"]
    finally:
        broken.stop()


def test_a_full_disk_loses_no_answer_and_leaves_no_partial_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(cache / "images")],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        srv = Server(cache).wait_ready()
        try:
            bodies = []
            for i in range(8):  # about 150 KB each: the disk fills after three or four
                resp = srv.client.get(
                    "/run", params={"prompt": f"filling the disk {i}", "width": 256, "height": 256}
                )
                assert resp.status_code == 200, resp.text
                bodies.append(srv.client.get(resp.json()["image_url"]).content)
            assert all(b.startswith(b"\x89PNG") for b in bodies)
            stats = srv.client.get("/api/cache/stats").json()
            assert stats["tiers"]["disk"]["errors"] >= 1 and stats["tiers"]["memory"]["entries"] >= 8
            assert "disk cache tier failed on put" in srv.log()
        finally:
            srv.stop()
        assert temp_files(cache) == []
        verified = cache_cli(cache, "verify")
        assert verified.returncode == 0 and json.loads(verified.stdout)["corrupt"] == 0
    finally:
        subprocess.run(["umount", str(cache / "images")], check=False)


def test_kill_9_during_cache_writes_leaves_no_visible_partial_entry(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for round_ in range(3):
        srv = Server(cache).wait_ready()
        stop = threading.Event()

        def load(srv: Server = srv, round_: int = round_, stop: threading.Event = stop) -> None:
            i = 0
            with httpx.Client(base_url=srv.url, timeout=60) as client:
                while not stop.is_set():
                    try:
                        client.get(
                            "/run",
                            params={
                                "prompt": f"killed {round_} {i}",
                                "width": 512,
                                "height": 512,
                                "steps": 1,
                            },
                        )
                    except httpx.TransportError:
                        return
                    i += 1

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        time.sleep(4 + round_)
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        stop.set()
        for w in workers:
            w.join(30)
        srv.stop()
    verified = cache_cli(cache, "verify")
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["corrupt"] == 0 and report["checked"] > 0, verified.stdout
    # Whatever a kill left behind is a temp file: never read as an entry, pruned once stale.
    restarted = Server(cache).wait_ready()
    try:
        hit = restarted.client.get(
            "/run", params={"prompt": "killed 0 0", "width": 512, "height": 512, "steps": 1}
        )
        assert hit.status_code == 200 and hit.json()["cache"] == "disk"
    finally:
        restarted.stop()
