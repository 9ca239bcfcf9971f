"""The process's life: prewarm, warm-up before ready, graceful SIGTERM, fatal device errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from bench.procs import wait_until
from pipeline.device_errors import is_fatal_device_error
from tests.conftest import ROOT, RedisServer, Server
from tests.engines import pixels

PREWARM = [sys.executable, str(ROOT / "prewarm.py"), "--model", "tiny", "--no-progress"]


def prewarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PREWARM, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def in_thread(call):
    """Run `call` in a thread; returns (thread, result list that gets its return value or exception)."""
    out: list = []

    def run():
        try:
            out.append(call())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def leftovers(cache_dir: Path) -> list[Path]:
    """Temp files of unfinished writes anywhere in the cache directory."""
    return [p for p in cache_dir.rglob("*") if p.name.endswith(".tmp")]


def entry_files(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "images").rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_prewarm_fills_the_cache_from_a_prompt_file(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# hot prompts\n"
        "a lighthouse at dusk|5|256x256\n"
        "一只在雪地里的红狐狸|6|128x128\n"
        "\n"
        "wrong size|1|100x100\n"
        "too|many|fields|here\n",
        encoding="utf-8",
    )
    cache = tmp_path / "cache"
    first = prewarm("--cache-dir", str(cache), "--prompts", str(prompts), "--warmup-sizes", "128x128")
    assert first.returncode == 1, first.stderr  # two lines are invalid
    assert "4 prompts" in first.stdout and "0 hits, 2 generated, 2 failed" in first.stdout
    assert "line 5: 100x100: each side must be a multiple of 16" in first.stdout
    assert "line 6: too many | fields" in first.stdout
    assert len(entry_files(cache)) == 2

    prompts.write_text("a lighthouse at dusk|5|256x256\n一只在雪地里的红狐狸|6|128x128\n", encoding="utf-8")
    again = prewarm("--cache-dir", str(cache), "--prompts", str(prompts))
    assert again.returncode == 0, again.stderr
    assert "2 prompts" in again.stdout and "2 hits (disk 2), 0 generated, 0 failed" in again.stdout
    assert "loading" not in again.stderr  # all hits: the model was never loaded


def test_a_port_in_use_ends_the_start_at_once_with_status_2_naming_it(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        done = subprocess.run(
            [
                sys.executable,
                "app.py",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--cache-dir",
                str(tmp_path),
            ],
            cwd=ROOT,
            env={**os.environ, "ZIMAGE_MODEL": "tiny"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        taken.close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    # Before anything was loaded or announced.
    assert "serving on" not in done.stderr and "loading" not in done.stderr.lower()


def test_prewarm_check(tmp_path: Path) -> None:
    ok = prewarm("--cache-dir", str(tmp_path / "cache"), "--check", "--warmup-sizes", "128x128")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: tiny-z-image-v1 on cpu (float32): loaded and warmed in")
    assert "one 128x128 image" in ok.stdout
    assert "warm-up 128x128" in ok.stderr
    assert entry_files(tmp_path / "cache") == []  # a check stores nothing

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    failed = prewarm("--cache-dir", str(tmp_path / "cache"), "--check", "--model", str(broken))
    assert failed.returncode == 1
    assert failed.stdout.startswith("failed: ") and len(failed.stdout.strip()) > len("failed: ") + 10

    usage = prewarm("--cache-dir", str(tmp_path / "cache"))
    assert usage.returncode == 2 and "--check, --prompts FILE" in usage.stderr


def test_hits_are_served_while_warming_and_misses_wait(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a warm bowl of soup|5|256x256\n")
    assert prewarm("--cache-dir", str(cache), "--prompts", str(prompts)).returncode == 0

    gate = tmp_path / "warm-up-gate"
    gate.touch()
    srv = Server(cache, env={"ZIMAGE_FAULT_GATE_WARMUP": str(gate)}, faults=True)
    try:
        srv.wait_model("warming")
        ready = srv.client.get("/ready")
        assert ready.status_code == 503 and ready.json() == {"status": "warming"}

        hit = srv.client.get(
            "/run", params={"prompt": "a warm bowl of soup", "seed": 5, "width": 256, "height": 256}
        )
        assert hit.status_code == 200 and hit.json()["cache"] == "disk"

        miss_params = {"prompt": "something new", "seed": 1, "width": 256, "height": 256}
        thread, out = in_thread(lambda: srv.client.get("/run", params=miss_params))
        wait_until(
            lambda: srv.client.get("/api/cache/stats").json()["queue_depth"] == 1,
            "a queued job",
            timeout_s=60,
        )
        assert thread.is_alive() and out == []  # waiting in the queue, not failed

        gate.unlink()
        thread.join(timeout=60)
        assert out and out[0].status_code == 200 and out[0].json()["cache"] == "miss"
        assert srv.client.get("/ready").status_code == 200
    finally:
        gate.unlink(missing_ok=True)
        srv.stop()


def test_sigterm_lets_the_generation_in_flight_finish(tmp_path: Path) -> None:
    cache, gate = tmp_path / "cache", tmp_path / "gate"
    srv = Server(cache, faults=True, env={"ZIMAGE_FAULT_GATE_GENERATION": str(gate)}).wait_ready()
    try:
        gate.touch()  # the next generation holds the engine until the test lets it go
        slow = {"prompt": "a slow painting", "width": 256, "height": 256, "steps": 2, "seed": 3}
        running, first = in_thread(lambda: srv.client.get("/run", params=slow))
        wait_until(
            Path(f"{gate}.reached").exists, "the generation at the gate", timeout_s=60
        )  # the engine is generating it
        queued, second = in_thread(lambda: srv.client.get("/run", params={**slow, "seed": 4}))
        wait_until(
            lambda: srv.client.get("/api/cache/stats").json()["queue_depth"] == 1,
            "a queued job",
            timeout_s=60,
        )
        srv.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "finishing the generation in flight" in srv.log(), "the stop begun", timeout_s=60)
        gate.unlink()

        assert srv.proc.wait(timeout=90) == 0, srv.log()
        running.join(5)
        queued.join(5)
        assert first[0].status_code == 200 and first[0].json()["cache"] == "miss"
        assert second[0].status_code == 503 and "shutting down" in second[0].json()["detail"]
        assert "finishing the generation in flight" in srv.log()
    finally:
        srv.stop()
    assert leftovers(cache) == []
    assert [p.name for p in entry_files(cache)] == [first[0].json()["key"]]
    verify = subprocess.run(
        [sys.executable, "-m", "cache", "--cache-dir", str(cache), "verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sigterm_abandons_a_generation_past_the_shutdown_timeout(tmp_path: Path) -> None:
    cache, gate = tmp_path / "cache", tmp_path / "gate"
    env = {"ZIMAGE_FAULT_GATE_GENERATION": str(gate)}
    srv = Server(cache, "--shutdown-timeout", "2s", faults=True, env=env).wait_ready()
    try:
        gate.touch()  # never lifted: the generation would run for ever
        endless = {"prompt": "a very slow painting", "width": 256, "height": 256, "steps": 2}
        in_thread(lambda: srv.client.get("/run", params=endless))
        wait_until(Path(f"{gate}.reached").exists, "the generation at the gate", timeout_s=60)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0, srv.log()
        assert time.monotonic() - signalled < 30
        assert "abandoning the generation in flight" in srv.log()
    finally:
        srv.stop()
    assert leftovers(cache) == [] and entry_files(cache) == []


def test_an_unrecoverable_device_error_ends_the_process(tmp_path: Path) -> None:
    trigger = tmp_path / "break-the-gpu"
    srv = Server(tmp_path / "cache", env={"ZIMAGE_FAULT_DEVICE_ERROR": str(trigger)}, faults=True)
    srv.wait_ready()
    try:
        trigger.touch()
        response = srv.client.get("/run", params={"prompt": "anything", "width": 256, "height": 256})
        assert response.status_code == 503
        assert "unrecoverable device error" in response.json()["detail"]
        assert srv.proc.wait(timeout=60) == 1, srv.log()  # so that Supervisor restarts it
        assert "CRITICAL" in srv.log() and "illegal memory access" in srv.log()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"), True),
        (torch.AcceleratorError("CUDA error: unspecified launch failure"), True),
        # Not every AcceleratorError breaks the context: only the listed ones end the process.
        (torch.AcceleratorError("CUDA error: out of memory"), False),
        (torch.AcceleratorError("CUDA error: invalid argument"), False),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"), False),
        (ValueError("bad value"), False),
    ],
)
def test_which_device_errors_are_fatal(error: Exception, fatal: bool) -> None:
    assert is_fatal_device_error(error) is fatal


def test_out_of_memory_splits_the_batch_then_answers_503_and_serves_on(tmp_path: Path) -> None:
    oom = tmp_path / "out-of-memory"
    env = {"ZIMAGE_FAULT_OOM_BATCH_OVER": "1", "ZIMAGE_FAULT_OOM": str(oom)}
    srv = Server(tmp_path / "cache", env=env, faults=True).wait_ready()
    try:
        body = {"prompt": "four at once", "width": 128, "height": 128, "seed": 10, "batch_size": 4}
        batch = srv.client.post("/api/generate", json=body)
        assert batch.status_code == 200, batch.text
        images = batch.json()["images"]
        assert [i["seed"] for i in images] == [10, 11, 12, 13] and {i["cache"] for i in images} == {"miss"}
        assert "generating it in two halves" in srv.log()
        # Split or not, each image is the one its seed makes alone.
        single = {k: v for k, v in body.items() if k != "batch_size"} | {"seed": 12}
        same = srv.client.post("/generate", params={"no_cache": "true"}, json=single)
        assert same.content == srv.client.get(images[2]["image_url"]).content

        oom.touch()
        failed = srv.client.get("/run", params={"prompt": "does not fit", "width": 128, "height": 128})
        assert failed.status_code == 503 and failed.headers["retry-after"]
        assert "ran out of memory for a 128x128 image" in failed.json()["detail"]
        oom.unlink()
        again = srv.client.get("/run", params={"prompt": "does not fit", "width": 128, "height": 128})
        assert again.status_code == 200 and again.json()["cache"] == "miss"
        assert srv.client.get("/ready").status_code == 200
    finally:
        srv.stop()


def test_a_batch_out_of_memory_in_decoding_decodes_one_at_a_time_and_a_size_that_never_fits_is_a_422(
    tmp_path: Path,
) -> None:
    # The VAE cannot decode 2 images at once; the transformer cannot take over 300x300.
    env = {"ZIMAGE_FAULT_DECODE_OOM_BATCH_OVER": "1", "ZIMAGE_FAULT_OOM_PIXELS_OVER": str(300 * 300)}
    srv = Server(tmp_path / "cache", env=env, faults=True).wait_ready()  # warmed at 256x256
    try:
        body = {"prompt": "three at once", "width": 128, "height": 128, "seed": 20, "batch_size": 3}
        batch = srv.client.post("/api/generate", json=body)
        assert batch.status_code == 200, batch.text
        images = batch.json()["images"]
        # Latents are decoded one image at a time anyway (pipeline/batch_invariance.py),
        # so the decoder never sees the batch it cannot take.
        assert "two halves" not in srv.log()  # the denoising was kept, not redone
        single = {k: v for k, v in body.items() if k != "batch_size"} | {"seed": 21}
        alone = srv.client.post("/generate", params={"no_cache": "true"}, json=single)
        in_batch = srv.client.get(images[1]["image_url"])
        # Denoised in a batch: the same pixels as alone (pipeline/batch_invariance.py).
        assert (pixels(alone.content) == pixels(in_batch.content)).all()

        # Larger than anything made here, and it fails again with memory freed: 422, not 503.
        big = {"prompt": "too big", "width": 512, "height": 512}
        refused = srv.client.get("/run", params=big)
        assert refused.status_code == 422 and "retry-after" not in refused.headers
        detail = refused.json()["detail"][0]
        assert detail["loc"] == ["query", "width"]
        assert "a 512x512 image does not fit" in detail["msg"]
        assert "the largest made here is 256x256" in detail["msg"]
        assert srv.log().count("trying once more") == 1
        # From then on, that size or larger is refused at once, without touching the GPU.
        larger = srv.client.post("/generate", json={"prompt": "larger", "width": 768, "height": 512})
        assert larger.status_code == 422 and "does not fit" in larger.json()["detail"][0]["msg"]
        assert srv.log().count("trying once more") == 1
        # A size between the largest made and the refused one is still tried.
        between = srv.client.get("/run", params={"prompt": "in between", "width": 288, "height": 288})
        assert between.status_code == 200 and between.json()["cache"] == "miss"
        assert srv.client.get("/ready").status_code == 200
    finally:
        srv.stop()


def test_closing_the_parts_stops_every_thread_they_started(tmp_path: Path, redis_server: RedisServer) -> None:
    """Engine (its worker and encoding pool), the cache's promotion thread, the Redis
    tier's connections and the pruner: nothing of ours is left running after close."""
    from bench.procs import wait_until
    from cache import Entry, Hit
    from cache.maintenance import Pruner
    from runtime.settings import load_settings
    from runtime.wiring import build_parts

    ours = ("zimage-", "cache-promote")
    watcher = redis_server.client()
    assert len(watcher.client_list()) == 1
    before = {t.ident for t in threading.enumerate()}
    settings = load_settings(
        ["--cache-dir", str(tmp_path), "--model", "tiny", "--redis-url", redis_server.url]
    )
    parts = build_parts(settings)
    parts.engine.start()
    assert parts.engine.wait_settled(120) == "ready", parts.engine.error
    redis = parts.cache.tiers[-1]
    redis.put("public", "ab" * 32, Entry(b"\x89PNG elsewhere", "png"))
    assert parts.cache.get("public", "ab" * 32) == Hit(Entry(b"\x89PNG elsewhere", "png"), "redis")
    assert parts.cache.wait_promotions(10)  # copied to the disk by the promotion thread
    pruner = Pruner(parts.disk, max_age_s=3600, max_bytes=1 << 30, interval_s=0.01)
    pruner.start()
    started = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith(ours)]
    assert {t.name.split("_")[0] for t in started} >= {"zimage-engine", "cache-promote"}

    assert parts.close(30)
    pruner.stop()
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith(ours)]
    assert left == []
    # Its connections are closed: only the one asking is left on the server.
    wait_until(lambda: len(watcher.client_list()) == 1, "the tier's connections closed", timeout_s=10)
