"""The Stats tab: images answered per interval by where the answer came from, the
cache tiers, and latency, in the page's language, refreshed every few seconds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import gradio as gr

from pipeline.results import GenerationResult
from pipeline.service import GenerationService
from web.ui_history import TIERS, took_text
from web.ui_text import I18N, language_of, say

BUCKET_S = 10  # one point of the plot: images answered in 10 seconds
WINDOW_S = 600  # the plot shows the last 10 minutes
REFRESH_S = 3.0


class StatsTab:
    """The tab's components, kept current from the service's statistics and a
    TierTimeline that observes every result."""

    def __init__(self, service: GenerationService) -> None:
        """Build the components (inside a `gr.Tab`)."""
        self.service = service
        self.timeline = TierTimeline()
        service.observers.append(self.timeline.record)
        self.outputs = [
            gr.LinePlot(
                x="time",
                y="requests",
                color="tier",
                label=I18N("requests_plot"),
                x_axis_format="%H:%M:%S",
                elem_id="requests-plot",
                **plot_labels("en"),
            ),
            gr.Dataframe(label=I18N("tiers_table"), interactive=False, elem_id="tiers"),
            gr.Markdown(elem_id="latency"),
        ]

    def refresh_on(self, ui: gr.Blocks) -> None:
        """Refresh on load and every REFRESH_S (the timer sits outside the tabs, so it
        ticks whichever tab is shown). No progress is drawn: Gradio's would show its own
        timer ("0.8s", in English whatever the page's language) when a refresh is slow."""
        for event in (gr.Timer(REFRESH_S).tick, ui.load):
            event(self.refresh, None, self.outputs, api_name=False, queue=False, show_progress="hidden")

    async def refresh(self, request: gr.Request) -> tuple[Any, Any, str]:
        lang = language_of(request)
        stats = await asyncio.to_thread(self.service.stats)
        plot = gr.LinePlot(value=self.timeline.frame(lang), **plot_labels(lang))
        return plot, tiers_frame(lang, stats), latency_text(lang, stats)


class TierTimeline:
    """Images answered per BUCKET_S, per tier (memory, disk, redis, miss, bypass), for
    the last WINDOW_S: a service observer (`record` sees every result). Thread-safe;
    its memory is bounded by the window."""

    def __init__(self) -> None:
        self._buckets: dict[int, Counter[str]] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def record(self, result: GenerationResult) -> None:
        bucket = int(time.time() // BUCKET_S)
        with self._lock:
            self._buckets.setdefault(bucket, Counter())[result.cache] += 1
            self._seen.add(result.cache)
            for old in [b for b in self._buckets if b <= bucket - WINDOW_S // BUCKET_S]:
                del self._buckets[old]

    def frame(self, lang: str, now: float | None = None) -> Any:
        """A table of (time, tier, requests) over the window, a row for every bucket and
        every tier seen since start (zeros included, so each line is continuous);
        memory and miss always."""
        import pandas as pd

        last = int((time.time() if now is None else now) // BUCKET_S)
        with self._lock:
            tiers = [t for t in TIERS if t in self._seen or t in ("memory", "miss")]
            counts = {
                b: self._buckets.get(b, Counter()) for b in range(last - WINDOW_S // BUCKET_S + 1, last + 1)
            }
        rows = [
            {
                "time": pd.Timestamp(bucket * BUCKET_S, unit="s"),
                "tier": say(lang, f"tier_{tier}"),
                "requests": counts[bucket][tier],
            }
            for bucket in counts
            for tier in tiers
        ]
        return pd.DataFrame(rows, columns=["time", "tier", "requests"])


def plot_labels(lang: str) -> dict[str, Any]:
    """The plot's axis and legend titles, and a colour per tier, in `lang`."""
    colors = {
        "memory": "#2f7ed8",
        "disk": "#8bbc21",
        "redis": "#c42525",
        "miss": "#f28f43",
        "bypass": "#77a1e5",
    }
    return {
        "x_title": say(lang, "axis_time"),
        "y_title": say(lang, "axis_requests"),
        "color_title": say(lang, "legend_tier"),
        "color_map": {say(lang, f"tier_{tier}"): color for tier, color in colors.items()},
    }


def tiers_frame(lang: str, stats: dict[str, Any]) -> Any:
    import pandas as pd

    columns = [say(lang, f"col_{c}") for c in ("tier", "hits", "entries", "mib", "errors")]
    rows = [
        [
            say(lang, f"tier_{name}"),
            tier["hits"],
            tier.get("entries"),
            None if tier.get("bytes") is None else round(tier["bytes"] / (1 << 20), 2),
            tier["errors"],
        ]
        for name, tier in stats["tiers"].items()
    ]
    return pd.DataFrame(rows, columns=columns)


def latency_text(lang: str, stats: dict[str, Any]) -> str:
    def fmt(p: dict[str, Any]) -> str:
        if not p["count"]:
            return "—"
        return say(
            lang,
            "percentiles",
            p50=took_text(lang, p["p50"]),
            p95=took_text(lang, p["p95"]),
            count=p["count"],
        )

    lat = stats["latency"]
    head = say(
        lang,
        "stats_line",
        requests=stats["requests"],
        hit_rate=f"{stats['hit_rate']:.0%}",
        generations=stats["generations"],
        queue=stats["queue_depth"],
    )
    generation = say(lang, "latency_generation", value=fmt(lat["generation"]))
    hit = say(lang, "latency_hit", value=fmt(lat["hit"]))
    text = f"{head}\n\n{generation}  \n{hit}"
    if (near := stats.get("near_repeats")) is not None:
        text += "\n\n" + say(
            lang,
            "near_line",
            suggested=near["suggested"],
            suggestions=near["suggestions"],
            used=near["used"],
            approximate=near["approximate_hits"],
            prompts=near["prompts"],
        )
    return text
