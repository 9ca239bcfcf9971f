"""`make bench`'s report: the table it prints and the plot it writes."""

from __future__ import annotations

from pathlib import Path

from bench import batch_throughput


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
    for ext, d in r.get("derived", {}).items():
        rows.append(
            (
                f"{ext} of a PNG in L1, first ask (encode p50 {d['encode_p50_ms']:.1f} ms)",
                f"{d['p50_ms']:.3f}",
                f"{d['p99_ms']:.3f}",
                f"{d['p50_ms'] / floor:.2f}",
                "",
            )
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
            "<= 2%" + ("" if m["overhead_p50"] <= 0.02 else "  MISSED"),
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
    if "batching" in r:
        rows += batch_throughput.rows(r["batching"])
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
