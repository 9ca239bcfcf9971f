"""Faults, hostile input and leaks: what must never lose, corrupt or expose what is stored."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from bench.procs import wait_until
from cache import SCHEMA_VERSION, Entry
from cache.entry import encode_record
from cache.keyring import key_id
from pipeline.tiny_model import ensure_tiny_model
from tests.conftest import ROOT, RedisServer, Server, ui_call
from web.access_log import redact_query

SMALL = {"width": 128, "height": 128}


def cache_cli(
    cache_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache", "--cache-dir", str(cache_dir), "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
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


def rss_bytes(server: Server) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match
    return int(match.group(1)) * 1024


def post_raw(server: Server, path: str, *, declared: int | None = None, chunked: int = 0) -> bytes:
    """POST on a raw socket: only a head declaring `declared` bytes, or `chunked` bytes
    sent in 8 KB chunks and no end; then read the answer (b"" if the server closed)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        length = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n\r\n".encode()
        )
        piece = b'{"data": ["' + b"x" * 8181
        for _ in range(chunked // len(piece)):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b"(no answer in 30 s)"


@pytest.mark.parametrize(
    "path",
    ["/gradio_api/call/generate", "/gradio_api/queue/join", "/gradio_api/upload", "/login", "/generate"],
)
def test_every_route_refuses_oversized_bodies_before_reading_them(server: Server, path: str) -> None:
    before = rss_bytes(server)
    for _ in range(5):
        assert post_raw(server, path, declared=50_000_000).startswith(b"HTTP/1.1 413")
        assert post_raw(server, path, chunked=72 * 1024).startswith(b"HTTP/1.1 413")
    # Nothing of a refused body is kept: 250 MB declared, 360 KB sent, no growth.
    assert rss_bytes(server) - before < 32 << 20
    assert server.client.get("/health").status_code == 200


def test_the_largest_valid_ui_call_fits_the_body_limit(server: Server) -> None:
    # Two 2,000-character prompts of astral characters, JSON-escaped as surrogate
    # pairs (12 bytes a character): about 48 KB, the largest body a valid call makes.
    emoji = "\U0001f98a" * 2000
    event, outputs = ui_call(server.client, prompt=emoji, negative_prompt=emoji, guidance_scale=1.0, steps=1)
    assert event == "complete", outputs


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_lone_surrogates_get_422_naming_the_field_on_every_route(server: Server, field: str) -> None:
    body = '{"prompt": "a fox", "width": 64, "height": 64, "' + field + '": "a \\ud800 fox"}'
    for path in ("/generate", "/api/generate"):
        resp = server.client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 422, (path, resp.text)
        assert resp.json()["detail"][0]["loc"][-1] == field
        assert "unpaired surrogate" in resp.json()["detail"][0]["msg"]
    event, message = ui_call(server.client, **{"prompt": "a fox", field: "a \ud800 fox"})
    assert event == "error" and message["error"].startswith(f"{field} contains an unpaired surrogate")
    # A query string cannot carry one (its bytes are decoded as UTF-8, with U+FFFD
    # for what is not): whatever is sent, no 500.
    run = server.client.get(f"/run?width=64&height=64&prompt=a%20fox&{field}=%ED%A0%80")
    assert run.status_code in (200, 422), run.text


def test_the_prompt_limit_holds_after_normalization(server: Server) -> None:
    # U+FDFA is one character; NFKC makes it 18.
    event, message = ui_call(server.client, prompt="\ufdfa" * 2000, prompt_normalization="aggressive")
    assert event == "error"
    assert (
        message["error"]
        == "prompt is 36000 characters after aggressive normalization; shorten it to at most 2000"
    )
    event, _ = ui_call(server.client, prompt="\ufdfa" * 111, prompt_normalization="aggressive")
    assert event == "complete"  # 1,998 characters


def test_negative_zero_guidance_is_the_same_request_as_zero(server: Server) -> None:
    keys = {
        server.client.get("/run", params={"prompt": "a signed zero", **SMALL, "guidance_scale": g}).json()[
            "key"
        ]
        for g in ("0", "-0.0", "0.0")
    }
    assert len(keys) == 1


@pytest.mark.parametrize("field", ["steps", "batch_size"])
def test_nan_steps_or_batch_through_the_gradio_api_get_a_clear_message(server: Server, field: str) -> None:
    # (Infinities are out of the sliders' bounds, which Gradio itself says.)
    value = float("nan")
    event, message = ui_call(server.client, prompt="a fox", **{field: value})
    assert event == "error"
    assert message["error"].startswith(f"{field} must be")


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


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/run?prompt=a%20secret&width=64", "/run?prompt=<redacted>&width=64"),
        ("/run?%70rompt=a%20secret&x=1", "/run?%70rompt=<redacted>&x=1"),
        (
            "/run?x=1&PROMPT=secret&Negative%5FPrompt=s2",
            "/run?x=1&PROMPT=<redacted>&Negative%5FPrompt=<redacted>",
        ),
        (
            "/run?pr%6Fmpt=a+secret&prompt=b&prompt=c",
            "/run?pr%6Fmpt=<redacted>&prompt=<redacted>&prompt=<redacted>",
        ),
        ("/health", "/health"),
        ("/run?width=64", "/run?width=64"),
    ],
)
def test_access_log_redaction_judges_names_as_the_server_reads_them(target: str, shown: str) -> None:
    assert redact_query(target) == shown


def test_percent_encoded_prompt_names_are_redacted_in_the_access_log(server: Server) -> None:
    for query in ("%70rompt=lighthouse%20keeper%20Oswin", "prom%70t=Oswin%27s+boat", "PROMPT=Oswin"):
        resp = server.client.get(f"/run?{query}&width=64&height=64")
        assert resp.status_code in (200, 422)
    log = server.log_path.read_text()
    assert "Oswin" not in log
    assert "%70rompt=<redacted>" in log


def test_rejected_requests_keep_no_parameter_or_unknown_path_in_the_access_log(server: Server) -> None:
    # Misspelled prompt names the route refuses (422), which a name-based redaction misses.
    for query in (
        "%2570rompt=Quirinus%20the%20lamplighter",
        "pro%20mpt=Quirinus+sails",
        "a=1%26prompt%3DQuirinus",
    ):
        assert server.client.get(f"/run?{query}&width=64&height=64").status_code == 422
    assert server.client.get("/run/Quirinus%20at%20dusk").status_code == 404  # words in a path
    assert server.client.get("/images/Quirinus.png?x=Quirinus").status_code == 404
    log = server.log_path.read_text()
    assert "Quirinus" not in log
    assert '"GET /run?<redacted> HTTP/1.1" 422' in log
    assert '"GET /run/<redacted> HTTP/1.1" 404' in log


def test_a_cache_secret_rejects_forged_and_edited_records(tmp_path: Path, redis_server: RedisServer) -> None:
    secret = "a-cache-secret-0123456789".ljust(32, "-")
    srv = Server(
        tmp_path / "cache",
        "--memory-cache-mb",
        "0",
        "--redis-url",
        redis_server.url,
        "--cache-secret",
        secret,
    ).wait_ready()
    client = redis_server.client()
    try:
        body = {"prompt": "a signed vase", **SMALL}
        made = srv.client.post("/generate", json=body)
        key = made.headers["x-key"]
        name = f"zimage:v{SCHEMA_VERSION}:{key_id(secret.encode())}:public:{key}"

        def only_in_redis(value: bytes) -> None:
            for path in (tmp_path / "cache" / "images").rglob(key):
                path.unlink()
            client.set(name, value)

        # Someone with write access to Redis but not the secret stores another image,
        # as a well-formed record with a valid SHA-256 ...
        forged = encode_record("public", key, Entry(data=b"\x89PNG forged", ext="png"))
        only_in_redis(forged)
        again = srv.client.post("/generate", json=body)
        assert again.headers["x-cache"] == "miss" and again.content == made.content
        assert client.get(name) != forged
        # ... or edits the header of a real one: the same bytes, served as JPEG.
        signed = client.get(name)
        edited = signed.replace(b'"ext":"png"', b'"ext":"jpeg"')
        edited = edited[:8] + (int.from_bytes(edited[8:12], "big") + 1).to_bytes(4, "big") + edited[12:]
        only_in_redis(edited)
        assert srv.client.get(f"/images/{key}.jpeg").status_code == 404
        again = srv.client.post("/generate", json=body)
        assert again.headers["x-cache"] == "miss" and again.headers["content-type"] == "image/png"
        assert srv.log_path.read_text().count("redis cache: dropping corrupt entry") == 2
        # Verifying the disk without the secret reports the signed entry and keeps it.
        verified = cache_cli(tmp_path / "cache", "verify")
        assert verified.returncode == 2 and json.loads(verified.stdout)["unverifiable"] == 1
        verified = cache_cli(tmp_path / "cache", "verify", env={"ZIMAGE_CACHE_SECRET": secret})
        assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] == 1
    finally:
        srv.stop()


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
        name = f"zimage:v{SCHEMA_VERSION}:unsigned:public:{key}"
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
    # Damage the transformer's weights in place, keeping size, mtime and inode (as
    # bit rot does): the fingerprint's digest cache, keyed by those, still names
    # the old content, so the key is the same and the cache still applies.
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    before = weights.stat()
    with open(weights, "r+b") as f:
        f.write(b"\xff" * before.st_size)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_ino == before.st_ino

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
    for round_ in range(2):  # two kills at different moments of the write load
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
        # Killed once images are landing on disk (more each round: another moment).
        on_disk = 2 + 2 * round_
        wait_until(
            lambda srv=srv, on_disk=on_disk: (
                srv.client.get("/api/cache/stats").json()["tiers"]["disk"]["entries"] >= on_disk
            ),
            "images on disk before the kill",
            timeout_s=60,
            interval_s=0.2,
        )
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
