"""Batching across requests, measured: images/s of N concurrent distinct prompts (tiny
model, 256x256, outside the cache) on a server that batches them (`--engine-batch 8`,
the default on CUDA) and on one that does not (`--engine-batch 1`, the CPU's default),
in one run, plus the
images per model call the first made (`zimage_engine_batch_size` in /metrics).

    python -m bench.batch_throughput [--clients 8] [--rounds 3]

`make bench` (bench/serving.py) runs `measure` on its own servers. On this CPU-only
machine the model is compute-bound, so a batch of N takes about N times one image and
the two figures are close; on a GPU a batch fills the device better (bench/gpu.py's
images/s by batch size says by how much).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.http_client import Client
from bench.procs import Server

SIZE = {"width": 256, "height": 256}


def burst(port: int, clients: int, round_no: int, label: str) -> float:
    """`clients` distinct prompts sent at once, bypassing the cache; seconds until the last image."""
    gate = threading.Barrier(clients)
    failures: list[int] = []

    def one(i: int) -> None:
        client = Client(port)
        gate.wait()
        reply = client.run(prompt=f"{label} batching {round_no} prompt {i}", no_cache="true", **SIZE)
        if reply.status != 200:
            failures.append(reply.status)
        client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, f"statuses {failures}"
    return time.perf_counter() - started


def batch_sizes(port: int) -> tuple[float, float]:
    """(images, model calls) so far, from the zimage_engine_batch_size histogram."""
    text = Client(port).request("GET", "/metrics").body.decode()

    def value(name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    return value("zimage_engine_batch_size_sum"), value("zimage_engine_batch_size_count")


def measure(batched: Server, unbatched: Server, clients: int, rounds: int) -> dict:
    """Images/s of `clients` concurrent distinct prompts on each server, the median of
    `rounds` bursts (one uncounted burst first on each), and the mean images per model
    call on `batched` during the counted bursts."""
    out: dict = {"clients": clients, "rounds": rounds, "size": "256x256"}
    for name, server in (("batched", batched), ("unbatched", unbatched)):
        burst(server.port, clients, -1, name)  # warm: every prompt length, every path
        images0, calls0 = batch_sizes(server.port)
        seconds = sorted(burst(server.port, clients, r, name) for r in range(rounds))
        images1, calls1 = batch_sizes(server.port)
        out[name] = {
            "images_per_s": clients / seconds[len(seconds) // 2],
            "images_per_call": (images1 - images0) / max(calls1 - calls0, 1),
        }
    out["speedup"] = out["batched"]["images_per_s"] / out["unbatched"]["images_per_s"]
    return out


def rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """The benchmark table's rows for `measure`'s result."""
    return [
        (
            f"{r['clients']} distinct prompts at once, {name}",
            f"{r[name]['images_per_s']:.2f} img/s",
            "",
            f"{r[name]['images_per_call']:.1f} images/call",
            f"{r['speedup']:.2f}x unbatched" if name == "batched" else "--engine-batch 1",
        )
        for name in ("batched", "unbatched")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.batch_throughput", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent distinct prompts (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts measured per server (default 3)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zimage-bench-"))
    env = {"OMP_NUM_THREADS": "1"}
    on, off = (
        Server(work / "on", "--engine-batch", "8", env=env),
        Server(work / "off", "--engine-batch", "1", env=env),
    )
    try:
        on.wait_ready(600)  # a shared machine can be slow to start two servers
        off.wait_ready(600)
        result = measure(on, off, args.clients, args.rounds)
    finally:
        on.stop()
        off.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    for row in rows(result):
        print("  ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
