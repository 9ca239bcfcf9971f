"""GPU benchmark: the full-size Z-Image-Turbo pipeline at 1024x1024 and 8 steps.

    python bench/gpu.py            on CUDA: the real architecture (bench/data/
                                   z-image-turbo-configs) with random bf16 weights, built
                                   directly on the GPU; speed does not depend on weight values
    python bench/gpu.py --tiny     the same code on the CPU with the tiny model (the suite runs it)

Measures, in one run: warm latency p50 with the text encoder, the transformer
(all steps) and the VAE decode timed apart; peak device memory; images/s at each
batch size; cold start (weights saved as safetensors -> `app.py --model DIR` ->
/ready -> first image, then the same again as a restart); the FLOPs of one
transformer forward (counted by torch's FlopCounterMode on the meta device, so
they are known before anything runs) and the measured matmul peak of the device
in the same run, hence MFU. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "bench" / "data" / "z-image-turbo-configs"
RESULTS = ROOT / "bench" / "results"
# A long prompt cut to --caption-tokens tokens (default 128: a detailed prompt in
# Qwen3's tokenizer with the chat template), so the text encoder and the caption
# part of the transformer's sequence cost what they do in use, whatever the tokenizer.
PROMPT = (
    "A weathered lighthouse on a basalt cliff at dusk, waves breaking into white spray below, "
    "a warm beam sweeping through light sea fog, gulls circling, the last orange light on the "
    "clouds, wet stones glistening in the foreground, a narrow path with a wooden railing "
    "leading up to the door, cinematic composition, 35mm photograph, fine film grain, high detail, "
) * 4


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def build_full_pipeline(
    configs: Path,
    device: str,
    models_dir: Path,
    offload: str = "none",
    quantize: str = "none",
    save_to: Path | None = None,
) -> Any:
    """The real architecture with random weights, allocated in bfloat16 from the start
    (never first in float32 on the CPU: 10B parameters would take minutes and 40 GB), each
    component where the service's placement plan for `--offload` puts it, quantized and
    offloaded by the service's own code; saved to `save_to` (for the cold start) before
    quantization and offload hooks change it. The tokenizer is the tiny model's: prompts
    of the same length, same template."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from pipeline.loading import check_quantize
    from pipeline.meta_memory import memory_needs
    from pipeline.placement import Placement, finish_placement, plan_placement, quantize_fp8
    from pipeline.tiny_model import ensure_tiny_model

    check_quantize(quantize, device)
    if device == "cuda":
        plan = plan_placement(offload, device, memory_needs(configs, torch.bfloat16, quantize))
    else:
        plan = Placement("none", device, "not a CUDA device")
    print(plan.describe(), file=sys.stderr)
    on = plan.component_devices()
    read = lambda part: json.loads((configs / part / "config.json").read_text())  # noqa: E731
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(on["transformer"]):
            transformer = ZImageTransformer2DModel.from_config(read("transformer"))
        with torch.device(on["text_encoder"]):
            text_encoder = Qwen3Model(Qwen3Config(**read("text_encoder")))
        with torch.device(on["vae"]):
            vae = AutoencoderKL.from_config(read("vae"))
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    )
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model(models_dir) / "tokenizer")
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    if save_to is not None:
        pipe.save_pretrained(save_to, safe_serialization=True)
    if quantize == "fp8":
        quantize_fp8(pipe.transformer, on["transformer"])
    finish_placement(pipe, plan)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(models_dir: Path, offload: str = "auto", quantize: str = "none") -> Any:
    """The service's own loading path with the tiny model."""
    from pipeline.loading import ModelOptions, load_pipeline, resolve_model

    options = ModelOptions(offload=offload, quantize=quantize)  # type: ignore[arg-type]
    return load_pipeline(resolve_model("tiny", models_dir, options), options)[0]


def transformer_flops(transformer: Any, size: int, caption_tokens: int) -> float:
    """FLOPs of one forward at `size`x`size` with `caption_tokens` caption tokens, counted
    on a copy of the architecture on the meta device (no memory, no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = type(transformer).from_config(transformer.config)
    channels = transformer.config.in_channels
    latent = size // 8
    x = [torch.empty(channels, 1, latent, latent, device="meta")]
    cap = [torch.empty(caption_tokens, transformer.config.cap_feat_dim, device="meta")]
    with FlopCounterMode(display=False) as counter:
        meta(x, torch.tensor([0.5], device="meta"), cap, return_dict=False)
    return float(counter.get_total_flops())


def matmul_peak(device: str, dtype: Any) -> float:
    """Measured dense matmul throughput of the device in `dtype`, FLOP/s (best of several)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(5):
        reps = 20 if device == "cuda" else 3
        started = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - started))
    return best


def one_image(pipe: Any, device: str, size: int, steps: int, batch: int, tokens: int) -> dict[str, float]:
    """One generation, stage by stage, the way the engine runs it: encode, denoise, decode."""
    import torch

    from pipeline.placement import text_encoder_device

    timings: dict[str, float] = {}
    started = time.perf_counter()
    embeds, _ = pipe.encode_prompt(
        prompt=PROMPT,
        device=text_encoder_device(pipe),  # the CPU under --offload text-encoder
        do_classifier_free_guidance=False,
        max_sequence_length=tokens,
    )
    embeds = [e.to(device) for e in embeds]
    sync(device)
    timings["text_encoder"] = time.perf_counter() - started

    started = time.perf_counter()
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
    latents = pipe(
        prompt_embeds=embeds * batch,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=generators,
        output_type="latent",
    ).images
    sync(device)
    timings["transformer"] = time.perf_counter() - started

    started = time.perf_counter()
    with torch.no_grad():
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        pixels = pipe.vae.decode(latents, return_dict=False)[0]
        pixels.float().cpu()
    sync(device)
    timings["vae_decode"] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    timings["caption_tokens"] = int(embeds[0].shape[0])
    return timings


def cold_start(model_dir: Path, size: int, timeout_s: float, *flags: str) -> dict[str, float]:
    """`app.py --model model_dir` from process start to /ready and to a first image, twice
    (the second start finds whatever the first left on disk: compile caches and the like)."""
    from bench.procs import Server

    out: dict[str, float] = {}
    cache = Path(tempfile.mkdtemp(prefix="zimage-cold-")) / "cache"
    for label in ("first_start", "restart"):
        started = time.perf_counter()
        srv = Server(
            cache,
            "--model",
            str(model_dir),
            "--warmup-sizes",
            f"{size}x{size}",
            "--log-level",
            "warning",
            *flags,
        )
        try:
            srv.wait_ready(timeout_s)
            out[f"{label}_ready_s"] = time.perf_counter() - started
            params = {"prompt": f"cold start {label}", "width": size, "height": size, "no_cache": True}
            assert srv.client.get("/run", params=params).status_code == 200
            out[f"{label}_first_image_s"] = time.perf_counter() - started
        finally:
            srv.stop()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.tiny:
        device, dtype = "cpu", torch.float32
    elif torch.cuda.is_available():
        device, dtype = "cuda", torch.bfloat16
    else:
        raise SystemExit("bench/gpu.py: no CUDA device here; run with --tiny for the CPU version")
    models_dir = Path(args.models_dir).expanduser()

    started = time.perf_counter()
    weights = Path(tempfile.mkdtemp(prefix="zimage-weights-")) if args.cold_start else None
    if args.tiny:
        pipe = build_tiny_pipeline(models_dir, args.offload, args.quantize)
        if weights is not None:
            pipe.save_pretrained(weights, safe_serialization=True)
    else:
        pipe = build_full_pipeline(CONFIGS, device, models_dir, args.offload, args.quantize, weights)
    build_s = time.perf_counter() - started
    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("transformer", "text_encoder", "vae")
    }

    peak = matmul_peak(device, dtype)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        one_image(pipe, device, args.size, args.steps, 1, args.caption_tokens)
    runs = [one_image(pipe, device, args.size, args.steps, 1, args.caption_tokens) for _ in range(args.runs)]
    p50 = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
    peak_memory = torch.cuda.max_memory_allocated() if device == "cuda" else None

    throughput = {}
    for batch in args.batches:
        one_image(pipe, device, args.size, args.steps, batch, args.caption_tokens)  # warm this shape
        seconds = statistics.median(
            one_image(pipe, device, args.size, args.steps, batch, args.caption_tokens)["total"]
            for _ in range(args.batch_runs)
        )
        throughput[batch] = batch / seconds

    flops = transformer_flops(pipe.transformer, args.size, int(p50["caption_tokens"]))
    flops_per_image = flops * args.steps
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "model": "tiny" if args.tiny else "full-size Z-Image-Turbo architecture, random weights",
        "offload": args.offload,
        "quantize": args.quantize,
        "parameters": params,
        "size": args.size,
        "steps": args.steps,
        "build_s": build_s,
        "latency_p50_s": p50,
        "peak_memory_bytes": peak_memory,
        "images_per_s": throughput,
        "transformer_forward_tflop": flops / 1e12,
        "tflop_per_image": flops_per_image / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "mfu_transformer": flops_per_image / p50["transformer"] / peak,
        "mfu_end_to_end": flops_per_image / p50["total"] / peak,
        "versions": {"torch": torch.__version__},
    }
    if weights is not None:
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
        flags = ("--offload", args.offload, "--quantize", args.quantize)
        report["cold_start"] = cold_start(weights, args.size, args.cold_timeout, *flags)
    return report


def count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def render(r: dict[str, Any]) -> str:
    p50 = r["latency_p50_s"]
    rows = [
        ("device", f"{r['device']} ({r['dtype']})"),
        ("model", r["model"]),
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
        rows.append((f"cold start: {name.replace('_', ' ')}", f"{value:.1f} s"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (for the test suite)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    parser.add_argument(
        "--caption-tokens", type=int, default=128, help="prompt length in tokens (default 128)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs for the p50 (default 10)")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--batch-runs", type=int, default=3, help="timed runs per batch size (default 3)")
    parser.add_argument(
        "--offload",
        choices=["auto", "none", "text-encoder", "model", "sequential"],
        default="auto",
        help="placement, as app.py --offload (default auto: what this GPU's free memory allows)",
    )
    parser.add_argument(
        "--quantize", choices=["none", "fp8"], default="none", help="as app.py --quantize (default none)"
    )
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cold-timeout", type=float, default=600.0, help="seconds allowed per cold start")
    parser.add_argument(
        "--models-dir", default="~/.cache/z-image-turbo/models", help="where the tiny model lives"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/gpu-<device>.json)"
    )
    args = parser.parse_args(argv)

    report = run(args)
    out = args.out or RESULTS / f"gpu-{'tiny-cpu' if args.tiny else report['device'].replace(' ', '-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
