"""Prometheus metrics at `/metrics`: counters and histograms fed by the service's
results, gauges read from the service's stats at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from pipeline.engine import EngineState
from pipeline.results import GenerationResult
from pipeline.service import GenerationService

HIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)


class Metrics:
    """One registry per service (tests run several in one process)."""

    def __init__(self, service: GenerationService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "zimage_requests",
            "Images asked for, by the tier that answered (miss and bypass were generated).",
            ["tier"],
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "zimage_generation_seconds",
            "Service time of requests that generated (queue, text encoder, denoising, decode, encode, store).",
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.hit_seconds = Histogram(
            "zimage_hit_seconds",
            "Service time of cache hits, by tier.",
            ["tier"],
            buckets=HIT_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "zimage_engine_batch_size",
            "Images per model call (jobs of concurrent requests gathered into one call; warm-up included).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        service.engine.batch_observers.append(self.batch_size.observe)
        self.registry.register(_StatsCollector(service))
        service.observers.append(self.observe)

    def observe(self, result: GenerationResult) -> None:
        self.requests.labels(result.cache).inc()
        if result.generated:
            self.generation_seconds.observe(result.duration)
        else:
            self.hit_seconds.labels(result.cache).observe(result.duration)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: OpenMetrics when `accept` (the request's
        Accept header) asks for `application/openmetrics-text`, else Prometheus text."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _StatsCollector(Collector):
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        stats = self.service.stats()
        yield CounterMetricFamily(
            "zimage_generations", "Pipeline runs (a batch is one run).", stats["generations"]
        )
        yield CounterMetricFamily("zimage_generated_images", "Images generated.", stats["generated_images"])
        yield GaugeMetricFamily(
            "zimage_queue_depth", "Generation jobs waiting to start.", stats["queue_depth"]
        )
        yield GaugeMetricFamily(
            "zimage_model_ready",
            "1 once the model is loaded and warm.",
            int(self.service.engine.state == EngineState.READY),
        )
        entries = GaugeMetricFamily("zimage_cache_entries", "Entries per cache tier.", labels=["tier"])
        size = GaugeMetricFamily("zimage_cache_bytes", "Bytes per cache tier.", labels=["tier"])
        errors = CounterMetricFamily(
            "zimage_cache_errors", "Failed calls to a cache tier (Redis outages show here).", labels=["tier"]
        )
        for name, tier in stats["tiers"].items():
            if tier.get("entries") is not None:
                entries.add_metric([name], tier["entries"])
                size.add_metric([name], tier["bytes"])
            errors.add_metric([name], tier["errors"])
        yield from (entries, size, errors)
        if (near := stats.get("near_repeats")) is not None:
            yield CounterMetricFamily(
                "zimage_similar_suggested", "Misses given near-repeat suggestions.", near["suggested"]
            )
            yield CounterMetricFamily(
                "zimage_similar_suggestions",
                "Near-repeat suggestions shown (up to 4 a miss).",
                near["suggestions"],
            )
            yield CounterMetricFamily(
                "zimage_similar_used", "Near-repeat suggestions a person used in the UI.", near["used"]
            )
            yield CounterMetricFamily(
                "zimage_similar_approximate_hits",
                "Requests with similar_threshold answered by a stored near-repeat (cache: similar).",
                near["approximate_hits"],
            )
            yield GaugeMetricFamily(
                "zimage_similar_prompts", "Prompts in the near-repeat indexes.", near["prompts"]
            )
        emb = stats["embeddings"]
        yield CounterMetricFamily(
            "zimage_embedding_cache_hits", "Prompts that skipped the text encoder.", emb["hits"]
        )
        yield CounterMetricFamily(
            "zimage_embedding_cache_misses", "Prompts the text encoder ran for.", emb["misses"]
        )
