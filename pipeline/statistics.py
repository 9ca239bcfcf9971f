"""What the generation service counts: requests, generations, hits per tier, and
recent latencies, for `/api/cache/stats`, `/metrics` and the UI's Stats tab."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any

from pipeline.results import GenerationResult

# Recent durations kept for the p50/p95 in stats.
LATENCY_WINDOW = 1000


class ServiceStatistics:
    """Counters and latency windows of one service. Thread-safe (one lock)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {
            "generation": deque(maxlen=LATENCY_WINDOW),
            "hit": deque(maxlen=LATENCY_WINDOW),
        }
        self._lock = threading.Lock()

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to `name`: requests (images asked for), generations (pipeline runs),
        generated_images."""
        with self._lock:
            self._counts[name] += n

    def served(self, results: Iterable[GenerationResult]) -> None:
        """Record what answered each image (a tier, or a generation) and how long it took."""
        with self._lock:
            for result in results:
                if result.generated:
                    self._latency["generation"].append(result.duration)
                else:
                    self._counts[f"hits:{result.cache}"] += 1
                    self._latency["hit"].append(result.duration)

    def snapshot(self, tiers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Requests, generations, images generated, hit rate, per tier (`tiers`: the
        cache's entries, bytes and errors) its hits, and the latency percentiles."""
        with self._lock:
            counts = self._counts.copy()
            latency = {name: sorted(values) for name, values in self._latency.items()}
        hits = 0
        for name, tier in tiers.items():
            tier["hits"] = counts[f"hits:{name}"]
            hits += tier["hits"]
        requests = counts["requests"]
        return {
            "requests": requests,
            "generations": counts["generations"],
            "generated_images": counts["generated_images"],
            "hit_rate": round(hits / requests, 4) if requests else 0.0,
            "tiers": tiers,
            "latency": {name: percentiles(values) for name, values in latency.items()},
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of sorted, non-empty values: the nearest rank at or below."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def percentiles(ordered: Sequence[float]) -> dict[str, float | None]:
    """p50 and p95 (rounded to microseconds) and the count of sorted values."""
    if not ordered:
        return {"p50": None, "p95": None, "count": 0}
    return {
        "p50": round(percentile(ordered, 0.50), 6),
        "p95": round(percentile(ordered, 0.95), 6),
        "count": len(ordered),
    }
