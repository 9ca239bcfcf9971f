"""`make bench`: what the cache costs and saves, against this server's own floor.

Starts a real redis-server and two servers with the tiny model, then measures in
one run (every figure also as a ratio to the floor, GET /health):

  floor       GET /health latency
  hits        L1 (memory), L2 (disk), L3 (Redis) hits through /run, /images/{key}
              and POST /generate, and misses
  throughput  hits/s at concurrency 1, 8 and 32, against /health at the same
  contention  hit latency while generations run (head-of-line blocking)
  miss cost   a generation with the cache against one with no_cache
  trace       N requests drawn from PartiPrompts (bench/data) with a Zipf law (s = 1.1):
              hit rate, generations against unique keys, latency by tier

Server A has every tier; server B shares A's Redis but has no memory tier and
its own empty disk, so that a key's first request on B is a Redis hit (copied to
B's disk) and every later one a disk hit. Both run torch with one thread
(OMP_NUM_THREADS=1): on this CPU-only machine a generation then occupies one
core, as on a GPU box it occupies the GPU, and leaves the others to serve hits.

Prints a table; writes bench/results/serving-<time>.json, serving-latest.json and
serving-latest.png.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import platform
import random
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench.procs import ROOT, RedisServer, Server

RESULTS = ROOT / "bench" / "results"
PARTI = ROOT / "bench" / "data" / "PartiPrompts.tsv"
SIZE = {"width": 256, "height": 256}
HIT_STEPS = 1  # entries for hit measurements: cheap to make, same size as any 256x256 PNG
KEYS_PER_ROUTE = 100  # distinct keys per route for the one-shot Redis hits


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> dict:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP/1.1 connection, timed per request; light enough that the
    client adds little to what is measured (and the same to every route)."""

    def __init__(self, port: int, namespace: str = "bench") -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.namespace = namespace

    def request(self, method: str, path: str, body: dict | None = None) -> Reply:
        headers = {"X-Namespace": self.namespace}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                payload = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection (uvicorn: after 5 s).
                self.conn.close()
                if attempt == 2:
                    raise
        seconds = time.perf_counter() - started
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, payload, seconds)

    def run(self, **params: object) -> Reply:
        return self.request("GET", "/run?" + urlencode(params))

    def close(self) -> None:
        self.conn.close()


def summarize(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": pick(0.50) * 1000,
        "p99_ms": pick(0.99) * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def timed(call: Callable[[], Reply], n: int, expect: str | None = None, warmup: int = 20) -> dict:
    """Latency of `n` calls after `warmup`; with `expect`, every reply must carry that X-Cache."""
    for _ in range(warmup):
        call()
    seconds, wrong = [], Counter()
    for _ in range(n):
        reply = call()
        if reply.status != 200 or (expect and reply.headers.get("x-cache") != expect):
            wrong[f"{reply.status}:{reply.headers.get('x-cache')}"] += 1
        seconds.append(reply.seconds)
    out = summarize(seconds)
    if wrong:
        out["unexpected"] = dict(wrong)
    return out


def throughput(port: int, make_call: Callable[[Client], Reply], concurrency: int, seconds: float) -> float:
    """Requests per second with `concurrency` clients each sending back to back."""
    counts = [0] * concurrency
    deadline = time.perf_counter() + seconds
    barrier = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        client = Client(port)
        make_call(client)  # connect before the clock starts
        barrier.wait()
        while time.perf_counter() < deadline:
            make_call(client)
            counts[i] += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def server_timing(reply: Reply) -> dict[str, float]:
    """`Server-Timing: total;dur=1.2, store;dur=0.3` -> {"total": 1.2, "store": 0.3} (ms)."""
    out = {}
    for part in reply.headers.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


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
            # ... and every later request a disk hit (B has no memory tier).
            calls_b = route_calls(cb, prompt, first["seed"], first["image_url"])
            hits[f"L2 disk {route_name}"] = timed(calls_b[route_name], n, expect="disk")
            print(f"hits through {route_name}: done", flush=True)
        report["hits"] = hits

        # 3. Misses, and what the cache adds to one: interleaved, with and without.
        cached, bypass, store_ms, lookup_ms = [], [], [], []
        for i in range(30):
            reply = ca.run(prompt=f"bench miss {i}", **SIZE)
            assert reply.headers.get("x-cache") == "miss", reply.headers
            cached.append(reply.seconds)
            timing = server_timing(reply)
            store_ms.append(timing.get("store", 0.0))
            lookup_ms.append(timing.get("lookup", 0.0))
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
    finally:
        a.stop()
        b.stop()
        redis.kill()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2)
    (RESULTS / f"serving-{stamp}.json").write_text(text)
    (RESULTS / "serving-latest.json").write_text(text)
    print()
    print(render_table(report))
    plot(report, RESULTS / "serving-latest.png")
    print(f"\nwrote {RESULTS / f'serving-{stamp}.json'} and serving-latest.{{json,png}}")
    return 0


def render_table(r: dict) -> str:
    floor = r["floor"]["p50_ms"]
    rows = [("measurement", "p50 ms", "p99 ms", "x floor p50", "target")]
    rows.append(("GET /health (the floor)", f"{floor:.3f}", f"{r['floor']['p99_ms']:.3f}", "1.00", ""))
    for name, s in r["hits"].items():
        target = "<= 2x" if name.startswith("L1") else "<= 3x"
        flag = "" if s["p50_ms"] / floor <= float(target[3:-1]) else "  MISSED"
        rows.append(
            (name, f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['p50_ms'] / floor:.2f}", target + flag)
        )
    m = r["miss"]
    rows.append(
        (
            "miss (with cache)",
            f"{m['cached']['p50_ms']:.1f}",
            f"{m['cached']['p99_ms']:.1f}",
            f"{m['cached']['p50_ms'] / floor:.0f}",
            "",
        )
    )
    rows.append(
        (
            "miss (no_cache)",
            f"{m['no_cache']['p50_ms']:.1f}",
            f"{m['no_cache']['p99_ms']:.1f}",
            f"{m['no_cache']['p50_ms'] / floor:.0f}",
            "",
        )
    )
    rows.append(
        (
            "caching cost on a miss",
            f"{m['overhead_p50'] * 100:+.2f}%",
            "",
            f"store {m['store_ms_p50']:.2f} ms",
            "<= 2%",
        )
    )
    c = r["contention"]
    ratio = c["during_generation"]["p50_ms"] / c["idle"]["p50_ms"]
    rows.append(
        (
            "L1 hit while generating",
            f"{c['during_generation']['p50_ms']:.3f}",
            f"{c['during_generation']['p99_ms']:.3f}",
            f"{c['during_generation']['p50_ms'] / floor:.2f}",
            f"{ratio:.2f}x idle (<= 2x)",
        )
    )
    for conc, t in r["throughput"].items():
        rows.append(
            (
                f"L1 hits/s, concurrency {conc}",
                f"{t['hit_rps']:.0f}/s",
                "",
                f"{t['ratio']:.2f} of floor",
                f"floor {t['floor_rps']:.0f}/s",
            )
        )
    t = r["trace"]
    rows.append(
        (
            "trace: requests / distinct prompts",
            f"{t['requests']}",
            "",
            f"{t['distinct_prompts']} prompts",
            f"{t['unique_keys']} keys",
        )
    )
    rows.append(
        ("trace: generations vs unique keys", f"{t['generations']}", "", f"{t['unique_keys']}", "equal")
    )
    rows.append(
        (
            "trace: served without own generation",
            f"{t['served_without_own_generation']:.4f}",
            "",
            f"expected {t['expected_hit_rate']:.4f}",
            f"tier hits {t['hit_rate']:.4f}, coalesced {t['coalesced']}",
        )
    )
    for tier, s in t["by_tier"].items():
        rows.append(
            (
                f"trace: {tier} (n={s['n']})",
                f"{s['p50_ms']:.3f}",
                f"{s['p99_ms']:.3f}",
                f"{s['p50_ms'] / floor:.2f}",
                "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = r["floor"]["p50_ms"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    names = ["/health (floor)", *r["hits"], "L1 /run while generating"]
    values = [1.0, *(s["p50_ms"] / floor for s in r["hits"].values())]
    values.append(r["contention"]["during_generation"]["p50_ms"] / floor)
    colors = (
        ["#888"]
        + [{"L1": "#2a9d8f", "L2": "#e9c46a", "L3": "#e76f51"}[n[:2]] for n in r["hits"]]
        + ["#264653"]
    )
    left.barh(names[::-1], values[::-1], color=colors[::-1])
    left.axvline(2, color="#2a9d8f", ls="--", lw=1, label="L1 target (2x)")
    left.axvline(3, color="#e76f51", ls="--", lw=1, label="L2/L3 target (3x)")
    left.set_xlabel(f"p50 latency / floor p50 ({floor:.2f} ms)")
    left.set_title("Hits against the HTTP floor")
    left.legend(loc="lower right")
    tiers = r["trace"]["by_tier"]
    x = range(len(tiers))
    right.bar([i - 0.2 for i in x], [s["p50_ms"] for s in tiers.values()], 0.4, color="#2a9d8f", label="p50")
    right.bar([i + 0.2 for i in x], [s["p99_ms"] for s in tiers.values()], 0.4, color="#e9c46a", label="p99")
    right.set_xticks(list(x), [f"{tier}\n(n={s['n']})" for tier, s in tiers.items()])
    right.set_yscale("log")
    right.set_ylabel("ms")
    t = r["trace"]
    right.set_title(
        f"Trace: {t['requests']} Zipf requests, {t['unique_keys']} keys, {t['generations']} generations"
    )
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
