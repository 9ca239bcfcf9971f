"""`make bench`: what the cache costs and saves, against this server's own floor.

Starts a real redis-server and two servers with the tiny model, then measures in
one run (every figure also as a ratio to the floor, GET /health):

  floor       GET /health latency
  hits        L1 (memory), L2 (disk), L3 (Redis) hits through /run, /images/{key}
              and POST /generate, and misses
  formats     a JPEG and a WebP of images stored as PNG: the first ask (a hit on the
              stored PNG, encoded then), and every later one (a hit on the stored copy)
  throughput  hits/s at concurrency 1, 8 and 32, against /health at the same
  contention  hit latency while generations run (head-of-line blocking)
  miss cost   a generation with the cache against one with no_cache
  trace       N requests drawn from PartiPrompts (bench/data) with a Zipf law (s = 1.1):
              hit rate, generations against unique keys, latency by tier
  batching    images/s of 8 concurrent distinct prompts on a third server with
              --engine-batch 8 (batching across requests) and on A (the CPU's default,
              --engine-batch 1): bench/batch_throughput.py

Server A has every tier; server B shares A's Redis but has no memory tier and
its own empty disk, so that a key's first request on B is a Redis hit (copied to
B's disk once B is quiet) and every later one a disk hit. Both run torch with one thread
(OMP_NUM_THREADS=1): on this CPU-only machine a generation then occupies one
core, as on a GPU box it occupies the GPU, and leaves the others to serve hits.

Prints a table; writes bench/results/serving-<time>.json, serving-latest.json and
serving-latest.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from bench import batch_throughput
from bench.http_client import Client, Reply, server_timing, summarize, throughput, timed
from bench.procs import ROOT, RedisServer, Server, wait_until
from bench.serving_report import plot, render_table

RESULTS = ROOT / "bench" / "results"
PARTI = ROOT / "bench" / "data" / "PartiPrompts.tsv"
SIZE = {"width": 256, "height": 256}
HIT_STEPS = 1  # entries for hit measurements: cheap to make, same size as any 256x256 PNG
KEYS_PER_ROUTE = 300  # distinct keys per route for the one-shot Redis hits


def populate(client: Client, prompt: str, count: int) -> list[dict]:
    """`count` entries of one prompt (seeds 0..count-1) through /api/generate; their images."""
    images = []
    for start in range(0, count, 8):
        body = {
            "prompt": prompt,
            "seed": start,
            "steps": HIT_STEPS,
            "batch_size": min(8, count - start),
            **SIZE,
        }
        reply = client.request("POST", "/api/generate", body)
        assert reply.status == 200, reply.body[:300]
        images += reply.json()["images"]
    return images


def route_calls(client: Client, prompt: str, seed: int, image_url: str) -> dict[str, Callable[[], Reply]]:
    fields = {"prompt": prompt, "seed": seed, "steps": HIT_STEPS, **SIZE}
    return {
        "/run": lambda: client.run(**fields),
        "/images/{key}": lambda: client.request("GET", image_url),
        "/generate": lambda: client.request("POST", "/generate", fields),
    }


def zipf_trace(prompts: list[str], total: int, s: float, seed: int) -> list[str]:
    weights = [1.0 / (rank**s) for rank in range(1, len(prompts) + 1)]
    order = random.Random(seed).sample(prompts, len(prompts))  # which prompt gets which rank
    return random.Random(seed + 1).choices(order, weights=weights, k=total)


def replay(port: int, trace: list[str], concurrency: int, steps: int) -> dict:
    """Send the trace with `concurrency` clients (in trace order); latency by tier."""
    lock, position = threading.Lock(), iter(range(len(trace)))
    by_tier: dict[str, list[float]] = defaultdict(list)
    keys: set[str] = set()
    errors: Counter[int] = Counter()

    def worker() -> None:
        client = Client(port, namespace="trace")
        while True:
            with lock:
                i = next(position, None)
            if i is None:
                break
            reply = client.run(prompt=trace[i], steps=steps, **SIZE)
            with lock:
                if reply.status != 200:
                    errors[reply.status] += 1
                    continue
                body = reply.json()
                by_tier[body["cache"]].append(reply.seconds)
                keys.add(body["key"])
        client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "seconds": time.perf_counter() - started,
        "unique_keys": len(keys),
        "by_tier": {tier: summarize(values) for tier, values in sorted(by_tier.items())},
        "errors": dict(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="samples per latency figure (default 1000)")
    parser.add_argument("--trace", type=int, default=2000, help="requests in the trace replay (default 2000)")
    parser.add_argument(
        "--trace-steps", type=int, default=4, help="denoising steps of trace misses (default 4)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="zimage-bench-"))
    redis = RedisServer(work).start()
    env = {"OMP_NUM_THREADS": "1", "ZIMAGE_REDIS_URL": redis.url}
    a = Server(work / "a", env=env)
    b = Server(work / "b", "--memory-cache-mb", "0", env=env)
    batched = Server(work / "c", "--engine-batch", "8", env=env)
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {"n": args.n, "size": "256x256", "hit_steps": HIT_STEPS, "torch_threads": 1},
    }
    try:
        a.wait_ready()
        b.wait_ready()
        ca, cb = Client(a.port), Client(b.port)
        n = args.n

        # 1. The floor.
        floor = timed(lambda: ca.request("GET", "/health"), n)
        floor_b = timed(lambda: cb.request("GET", "/health"), n)
        report["floor"] = floor
        report["floor_b"] = floor_b
        print(
            f"floor: /health p50 {floor['p50_ms']:.3f} ms (server B {floor_b['p50_ms']:.3f} ms)", flush=True
        )

        # 2. Hits by tier and route.
        hits: dict[str, dict] = {}
        for route_name, prompt in (
            ("/run", "bench run"),
            ("/images/{key}", "bench images"),
            ("/generate", "bench generate"),
        ):
            # 20 more keys than are measured: their Redis hits warm B's path first,
            # as the 20 uncounted calls of `timed` do for every other figure.
            images = populate(ca, prompt, KEYS_PER_ROUTE + 20)
            first = images[0]
            calls_a = route_calls(ca, prompt, first["seed"], first["image_url"])
            hits[f"L1 memory {route_name}"] = timed(calls_a[route_name], n, expect="memory")
            # On B: each key once is a Redis hit (then copied to B's disk) ...
            once = [route_calls(cb, prompt, img["seed"], img["image_url"])[route_name] for img in images]
            it = iter(once)
            hits[f"L3 redis {route_name}"] = timed(
                lambda it=it: next(it)(), KEYS_PER_ROUTE, expect="redis", warmup=20
            )
            # ... and every later request a disk hit (B has no memory tier), once B has
            # written its copies: it does when its cache is quiet (cache.layered.QUIET_S),
            # which polling it every 0.2 s leaves it, in order, so the last key's is last.
            wait_until(
                lambda call=once[-1]: call().headers.get("x-cache") == "disk",
                f"server B's copies of its Redis hits through {route_name} on its disk",
                timeout_s=30,
                interval_s=0.2,
            )
            calls_b = route_calls(cb, prompt, first["seed"], first["image_url"])
            hits[f"L2 disk {route_name}"] = timed(calls_b[route_name], n, expect="disk")
            print(f"hits through {route_name}: done", flush=True)
        report["hits"] = hits

        # 2b. Other formats than the stored PNG: the first ask of each image makes it
        #     from the PNG in memory (Server-Timing's encode_<ext>); later ones hit the copy.
        images = populate(ca, "bench formats", KEYS_PER_ROUTE + 20)
        derived: dict[str, dict] = {}
        for ext in ("jpeg", "webp"):
            urls = [img["image_url"].removesuffix(".png") + f".{ext}" for img in images]
            replies = [ca.request("GET", url) for url in urls]
            first = replies[20:]  # the first 20 warm the path, as in `timed`
            assert all(r.status == 200 and r.headers.get("x-cache") == "memory" for r in first)
            encode_ms = sorted(server_timing(r)[f"encode_{ext}"] for r in first)
            derived[ext] = {
                **summarize([r.seconds for r in first]),
                "encode_p50_ms": statistics.median(encode_ms),
                "bytes_mean": statistics.fmean(len(r.body) for r in first),
            }
            hits[f"L1 memory /images/{{key}}.{ext} (made before)"] = timed(
                lambda url=urls[-1]: ca.request("GET", url), n, expect="memory"
            )
            print(f"{ext} from the stored PNG: done", flush=True)
        report["derived"] = derived

        # 3. Misses, and what the cache adds to one: interleaved, with and without.
        cached, bypass, store_ms = [], [], []
        for i in range(30):
            reply = ca.run(prompt=f"bench miss {i}", **SIZE)
            assert reply.headers.get("x-cache") == "miss", reply.headers
            cached.append(reply.seconds)
            timing = server_timing(reply)
            store_ms.append(timing.get("store", 0.0))
            reply = ca.run(prompt=f"bench bypass {i}", no_cache="true", **SIZE)
            assert reply.headers.get("x-cache") == "bypass", reply.headers
            bypass.append(reply.seconds)
        miss, nocache = summarize(cached), summarize(bypass)
        report["miss"] = {
            "cached": miss,
            "no_cache": nocache,
            "overhead_p50": miss["p50_ms"] / nocache["p50_ms"] - 1,
            "overhead_mean": miss["mean_ms"] / nocache["mean_ms"] - 1,
            "store_ms_p50": statistics.median(store_ms),
        }
        print("misses: done", flush=True)

        # 4. Throughput of hits against the floor's, at each concurrency.
        hit_fields = {"prompt": "bench run", "seed": 0, "steps": HIT_STEPS, **SIZE}
        report["throughput"] = {}
        for c in (1, 8, 32):
            floor_rps = throughput(a.port, lambda cl: cl.request("GET", "/health"), c, args.seconds)
            hit_rps = throughput(a.port, lambda cl: cl.run(**hit_fields), c, args.seconds)
            report["throughput"][c] = {
                "floor_rps": floor_rps,
                "hit_rps": hit_rps,
                "ratio": hit_rps / floor_rps,
            }
            print(f"throughput c={c}: /health {floor_rps:.0f}/s, L1 hits {hit_rps:.0f}/s", flush=True)

        # 5. Hits while generations run back to back (head-of-line blocking).
        busy, generated = threading.Event(), [0]

        def generate_constantly() -> None:
            client, i = Client(a.port), 0
            while not busy.is_set():
                client.run(prompt=f"bench background {i}", width=512, height=512)
                generated[0] += 1
                i += 1
            client.close()

        background = threading.Thread(target=generate_constantly)
        background.start()
        time.sleep(1.0)
        during = timed(lambda: ca.run(**hit_fields), n, expect="memory")
        busy.set()
        background.join()
        idle = timed(lambda: ca.run(**hit_fields), n, expect="memory")
        report["contention"] = {"idle": idle, "during_generation": during, "generations": generated[0]}
        print("contention: done", flush=True)

        # 6. The trace.
        with PARTI.open(encoding="utf-8") as f:
            prompts = sorted(
                {row["Prompt"].strip() for row in csv.DictReader(f, delimiter="\t") if row["Prompt"].strip()}
            )
        trace = zipf_trace(prompts, args.trace, 1.1, seed=7)
        before = ca.request("GET", "/api/cache/stats").json()
        replayed = replay(a.port, trace, 8, args.trace_steps)
        after = ca.request("GET", "/api/cache/stats").json()
        generations = after["generations"] - before["generations"]
        counts = {tier: s["n"] for tier, s in replayed["by_tier"].items()}
        tier_hits = sum(v for k, v in counts.items() if k not in ("miss", "bypass"))
        replayed.update(
            {
                "requests": args.trace,
                "distinct_prompts": len(set(trace)),
                "generations": generations,
                "hit_rate": tier_hits / args.trace,
                "served_without_own_generation": 1 - generations / args.trace,
                "expected_hit_rate": 1 - replayed["unique_keys"] / args.trace,
                "coalesced": counts.get("miss", 0) - generations,
            }
        )
        report["trace"] = replayed
        print("trace: done", flush=True)

        # 7. Batching across requests: concurrent distinct prompts, with and without.
        batched.wait_ready()
        report["batching"] = batch_throughput.measure(batched, a, clients=8, rounds=3)
        print("batching: done", flush=True)
    except BaseException:
        print(f"the servers' logs and caches are kept in {work}", file=sys.stderr)
        raise
    finally:
        a.stop()
        b.stop()
        batched.stop()
        redis.kill()
    shutil.rmtree(work)  # two caches of hundreds of MB: one per run would fill /tmp

    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2)
    (RESULTS / f"serving-{stamp}.json").write_text(text)
    (RESULTS / "serving-latest.json").write_text(text)
    print()
    print(render_table(report))
    plot(report, RESULTS / "serving-latest.png")
    print(f"\nwrote {RESULTS / f'serving-{stamp}.json'} and serving-latest.{{json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
