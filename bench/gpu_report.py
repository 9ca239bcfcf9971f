"""bench/gpu.py's report as a table of lines."""

from __future__ import annotations

from typing import Any


def count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def render(r: dict[str, Any]) -> str:
    p50 = r["latency_p50_s"]
    rows = [
        ("device", f"{r['device']} ({r['dtype']})"),
        ("model", r["model"]),
        (
            "levers",
            ", ".join(f"{k} {'-' if v is None else v}" for k, v in r["levers"].items()),
        ),
        ("parameters", ", ".join(f"{k} {count(v)}" for k, v in r["parameters"].items())),
        (
            "image",
            f"{r['size']}x{r['size']}, {r['steps']} steps, {int(p50['caption_tokens'])} caption tokens",
        ),
        ("warm latency p50", f"{p50['total']:.3f} s"),
        ("  text encoder", f"{p50['text_encoder'] * 1000:.1f} ms"),
        (
            "  transformer",
            f"{p50['transformer'] * 1000:.1f} ms ({p50['transformer'] / r['steps'] * 1000:.1f} ms/step)",
        ),
        ("  VAE decode", f"{p50['vae_decode'] * 1000:.1f} ms"),
        (
            "peak memory",
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] else "n/a (CPU)",
        ),
        *case_rows(r),
        *overhead_rows(r),
        ("images/s by batch", ", ".join(f"b{b}: {v:.3f}" for b, v in r["images_per_s"].items())),
        (
            "FLOPs",
            f"{r['transformer_forward_tflop']:.3g} TFLOP/forward, {r['tflop_per_image']:.3g} TFLOP/image",
        ),
        ("matmul peak (measured)", f"{r['matmul_peak_tflops']:.3g} TFLOP/s"),
        (
            "MFU",
            f"transformer {r['mfu_transformer'] * 100:.1f}%, end to end {r['mfu_end_to_end'] * 100:.1f}%",
        ),
    ]
    for name, value in r.get("cold_start", {}).items():
        shown = value if isinstance(value, str) else f"{value:.1f} s"  # "skipped": why
        rows.append((f"cold start: {name.replace('_', ' ')}", shown))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def case_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for name, case in r["cases"].items():
        p50 = case["latency_p50_s"]
        rows.append(
            (
                f"{name}: p50",
                f"{p50['total']:.3f} s (text {p50['text_encoder'] * 1000:.0f} ms, transformer "
                f"{p50['transformer'] * 1000:.0f} ms, VAE {p50['vae_decode'] * 1000:.0f} ms; "
                f"MFU {case['mfu_transformer'] * 100:.1f}%; first run {case['first_run_s']:.1f} s)",
            )
        )
    return rows


def overhead_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            f"service overheads {size}x{size}",
            f"PNG encode {o['encode_png_s'] * 1000:.1f} ms ({o['png_bytes'] / 2**20:.1f} MiB), "
            f"store memory {o['store_memory_s'] * 1000:.2f} ms, disk {o['store_disk_s'] * 1000:.1f} ms",
        )
        for size, o in r["service_overheads"].items()
    ]
