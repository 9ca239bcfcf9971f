"""`make load`: 32 clients mixing hits and misses against one server for 60 s.

Checks what docs/RELIABILITY.md promises under load, and exits 1 if any fails:
no 5xx but the documented queue-full 503; every request answered (no
connection errors, no timeouts); resident memory bounded by the configured
caches (memory tier + embedding cache + the process without them); the
generation queue never longer than --max-queue. Writes
bench/results/load-latest.json.

    python -m bench.load [--clients 32] [--seconds 60] [--hit-ratio 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.procs import ROOT, Server

RESULTS = ROOT / "bench" / "results"
MEMORY_CACHE_MB = 64
EMBEDDING_CACHE_MB = 16
MAX_QUEUE = 8


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hit-ratio", type=float, default=0.8, help="share of requests for known prompts")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zimage-load-"))
    settings = ["--memory-cache-mb", str(MEMORY_CACHE_MB), "--embedding-cache-mb", str(EMBEDDING_CACHE_MB)]
    env = {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "")}
    srv = Server(
        work / "cache", *settings, "--max-queue", str(MAX_QUEUE), env={k: v for k, v in env.items() if v}
    )
    srv.wait_ready()
    known = [f"a known prompt {i}" for i in range(20)]
    for prompt in known:  # the hits to come
        srv.client.get("/run", params={"prompt": prompt, "width": 256, "height": 256})
    baseline = rss_bytes(srv.proc.pid)

    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    samples: list[tuple[float, int, int]] = []  # (t, rss, queue depth)
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + args.seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                if rng.random() < args.hit_ratio:
                    params = {"prompt": rng.choice(known), "width": 256, "height": 256}
                else:  # a new image every time, of varied size: the memory tier must evict
                    side = rng.choice((256, 384, 512))
                    params = {"prompt": f"client {seed} miss {n}", "width": side, "height": side, "steps": 2}
                try:
                    resp = http.get("/run", params=params)
                except httpx.HTTPError as exc:
                    with lock:
                        errors[type(exc).__name__] += 1
                    continue
                with lock:
                    statuses[resp.status_code] += 1
                    if resp.status_code == 200:
                        tiers[resp.json()["cache"]] += 1
                if resp.status_code == 503:
                    time.sleep(float(resp.headers.get("retry-after", 1)) / 5)

    def watch() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            while time.monotonic() < deadline:
                depth = http.get("/api/cache/stats").json()["queue_depth"]
                samples.append((time.monotonic() - started, rss_bytes(srv.proc.pid), depth))
                time.sleep(1.0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=watch))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = srv.client.get("/api/cache/stats").json()
    srv.stop()
    shutil.rmtree(work)  # its cache: hundreds of MB a run

    peak_rss = max(rss for _, rss, _ in samples)
    bound = (
        baseline + (MEMORY_CACHE_MB + EMBEDDING_CACHE_MB) * 2**20 + 256 * 2**20
    )  # + working set of generation
    server_errors = {code: n for code, n in statuses.items() if code >= 500 and code != 503}
    report = {
        "clients": args.clients,
        "seconds": args.seconds,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "tiers": dict(tiers),
        "client_errors": dict(errors),
        "generations": stats["generations"],
        "max_queue_depth": max(depth for _, _, depth in samples),
        "max_queue": MAX_QUEUE,
        "rss_baseline_mib": baseline / 2**20,
        "rss_peak_mib": peak_rss / 2**20,
        "rss_bound_mib": bound / 2**20,
        "memory_tier_bytes": stats["tiers"]["memory"]["bytes"],
        "memory_tier_limit": MEMORY_CACHE_MB * 2**20,
        "rss_mib_every_10s": [round(rss / 2**20) for t, rss, _ in samples[::10]],
    }
    checks = {
        "no 5xx but queue-full 503": not server_errors,
        "every request answered": not errors,
        "queue within --max-queue": report["max_queue_depth"] <= MAX_QUEUE,
        "memory tier within its size": report["memory_tier_bytes"] <= report["memory_tier_limit"],
        "resident memory bounded": peak_rss <= bound,
    }
    report["checks"] = checks
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load-latest.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
