"""A timed HTTP client for the benchmarks: one keep-alive connection, latency
summaries and throughput at a given concurrency."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from pipeline.statistics import percentile


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
    return {
        "n": len(ordered),
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
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
