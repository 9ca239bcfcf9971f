"""Peak CPU memory (RSS) of loading the model into RAM, as the service does it.

    python -m bench.load_memory [--layers 2]

Builds a slim model with the real architecture's widths (bench/data/z-image-turbo-
configs, with `--layers` transformer and text-encoder layers instead of 30 and 36, so
it fits this machine), saves random bfloat16 weights as safetensors, then loads it in
a fresh process through pipeline/placement.py's `load_placed` onto the CPU (where
--offload text-encoder keeps the text encoder, and model/sequential offload every
component) and reports the process's peak RSS over its RSS before loading, against
the bytes of the weights. The ratio carries over to the full-size model (weights
scale with layers). A load straight to the GPU is not measurable here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.full_model import CONFIGS, ROOT

MEASURE = """
import json, sys, torch
from pathlib import Path
from pipeline.placement import Placement, load_placed
import diffusers, transformers  # imported before the baseline, as in the service

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

before = rss("VmRSS")
pipe = load_placed(Path(sys.argv[1]), torch.bfloat16, Placement("none", "cpu", "measured"))
loaded = {"peak": rss("VmHWM"), "after": rss("VmRSS"), "anon": rss("RssAnon"), "file": rss("RssFile")}
# Weights loaded from safetensors may still be file pages not yet read: touch every
# one, as the first generation does, and count again.
with torch.no_grad():
    for name in ("transformer", "text_encoder", "vae"):
        for t in (*getattr(pipe, name).parameters(), *getattr(pipe, name).buffers()):
            t.sum()
used = {"peak": rss("VmHWM"), "after": rss("VmRSS"), "anon": rss("RssAnon"), "file": rss("RssFile")}
print(json.dumps({"before": before, "loaded": loaded, "used": used}))
"""


def build(layers: int, out: Path) -> int:
    """Save a slim full-width model with random bfloat16 weights to `out`; its weight bytes."""
    from bench.full_model import build_full_pipeline

    slim = out / "configs"
    shutil.copytree(CONFIGS, slim)
    for part, key in (("transformer", "n_layers"), ("text_encoder", "num_hidden_layers")):
        config = json.loads((slim / part / "config.json").read_text())
        config[key] = layers
        (slim / part / "config.json").write_text(json.dumps(config))
    pipe = build_full_pipeline(slim, "cpu", out / "models")
    pipe.save_pretrained(out / "model", safe_serialization=True)
    return sum(
        t.numel() * t.element_size()
        for name in ("transformer", "text_encoder", "vae")
        for t in (*getattr(pipe, name).parameters(), *getattr(pipe, name).buffers())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/load_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers", type=int, default=2, help="transformer and text-encoder layers (default 2)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zimage-load-memory-"))
    try:
        weights = build(args.layers, work)
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, str(work / "model")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        rss = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gib, before = 1 << 30, rss["before"]
    print(f"weights (bf16)               {weights / gib:.2f} GiB")
    print(f"RSS before loading           {before / gib:.2f} GiB (Python, torch, diffusers, transformers)")
    for label, key in (("loaded", "loaded"), ("every weight read", "used")):
        r = rss[key]
        grown = r["peak"] - before
        print(
            f"{label + ':':<28} peak +{grown / gib:.2f} GiB ({grown / weights:.2f}x the weights); "
            f"now anonymous {r['anon'] / gib:.2f} GiB, file-backed {r['file'] / gib:.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
