"""GPU benchmark: the full-size Z-Image-Turbo pipeline, 8 steps, at 1024x1024 and 2048x2048,
without and with guidance, with the service's speed levers chosen by flags.

    python bench/gpu.py            on CUDA: the real architecture (bench/data/
                                   z-image-turbo-configs) with random bf16 weights, built
                                   directly on the GPU; speed does not depend on weight values
    python bench/gpu.py --tiny     the same code on the CPU with the tiny model (the suite runs it)
    python bench/gpu.py --compile off --attention-backend native    one lever against another
                                   (--offload, --quantize, --compile, --attention-backend:
                                   the service's levers, as app.py names them)

Measures, in one run: warm latency p50 per size and guidance scale with the text
encoder (at the service's 512-token length), the transformer (all steps) and the
VAE decode timed apart, and the first (warm-up, compiling) run; the service's own
overheads per size (PNG encoding with the parameters inside, and storing to the
memory and disk tiers); peak device memory; images/s at each batch size; cold start
(weights saved as safetensors -> `app.py --model DIR` with the same levers -> /ready
-> first image, then the same again as a restart; the weights are deleted after);
the FLOPs of the transformer (counted by torch's FlopCounterMode on the meta device,
so they are known before anything runs) and the measured matmul peak of the device in
the same run, hence MFU. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
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
# A long prompt. The text encoder runs it at the service's length (512 tokens, padded,
# as encode_prompt does); the transformer gets its first --caption-tokens tokens
# (default 128: a detailed prompt in Qwen3's tokenizer with the chat template), so the
# caption part of the sequence costs what it does in use, whatever the tokenizer.
# Guided runs use the service's default negative prompt, "" (its chat template alone).
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


def one_image(
    pipe: Any, device: str, size: int, steps: int, batch: int, tokens: int, guidance: float = 0.0
) -> dict[str, float]:
    """One generation, stage by stage, the way the engine runs it: encode, denoise, decode."""
    import torch

    from pipeline.embeddings import MAX_SEQUENCE_LENGTH
    from pipeline.engine import decode_latents
    from pipeline.placement import text_encoder_device

    timings: dict[str, float] = {}
    started = time.perf_counter()
    encode = lambda text: [  # noqa: E731
        e.to(device)
        for e in pipe.encode_prompt(
            prompt=text,
            device=text_encoder_device(pipe),  # the CPU under --offload text-encoder
            do_classifier_free_guidance=False,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )[0]
    ]
    embeds = [e[:tokens] for e in encode(PROMPT)]
    negative = encode("") if guidance > 0 else None
    sync(device)
    timings["text_encoder"] = time.perf_counter() - started

    started = time.perf_counter()
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
    latents = pipe(
        prompt_embeds=embeds * batch,
        negative_prompt_embeds=negative * batch if negative else None,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        output_type="latent",
    ).images
    sync(device)
    timings["transformer"] = time.perf_counter() - started

    started = time.perf_counter()
    decode_latents(pipe, latents)  # ends on the CPU, so it is synchronised
    timings["vae_decode"] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    timings["caption_tokens"] = int(embeds[0].shape[0])
    timings["negative_tokens"] = int(negative[0].shape[0]) if negative else 0
    return timings


def service_overheads(size: int, runs: int, work_dir: Path) -> dict[str, float]:
    """What the service adds to a generation at `size`: encoding the PNG (with the
    parameters inside, on the encoding pool) and storing it in the memory and disk
    tiers, p50 over `runs`, on a noise image (PNG's worst case: it compresses least)."""
    import numpy as np

    from cache import DiskTier, Entry, MemoryTier
    from pipeline.encoding import encode_image
    from pipeline.loading import ModelIdentity
    from pipeline.request import CanonicalRequest

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    request = CanonicalRequest(PROMPT[:200], "", 42, size, size, 8, 0.0, "png")
    identity = ModelIdentity("bench", "sha256:bench", work_dir, "cpu", "float32", True, 64)
    memory, disk = MemoryTier(1 << 30), DiskTier(work_dir / "images")
    encode, store_memory, store_disk = [], [], []
    for i in range(runs):
        started = time.perf_counter()
        data = encode_image(pixels, request, identity)
        encode.append(time.perf_counter() - started)
        entry, key = (
            Entry(data=data, ext="png", meta={"seed": i}),
            hashlib.sha256(b"%d:%d" % (size, i)).hexdigest(),
        )
        started = time.perf_counter()
        memory.put("public", key, entry)
        store_memory.append(time.perf_counter() - started)
        started = time.perf_counter()
        disk.put("public", key, entry)
        store_disk.append(time.perf_counter() - started)
    return {
        "png_bytes": len(data),
        "encode_png_s": statistics.median(encode),
        "store_memory_s": statistics.median(store_memory),
        "store_disk_s": statistics.median(store_disk),
    }


def apply_levers(pipe: Any, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """The service's speed levers, applied as the engine applies them after loading."""
    from pipeline.attention import apply_backend, choose_backend, model_attention_shape
    from pipeline.compile import compile_transformer, should_compile

    # After placement (--offload) and --quantize, which the builders apply: the attention
    # backend and compilation act on the transformer as placed and quantised.
    transformer = pipe.transformer
    heads, head_dim = model_attention_shape(transformer)
    backend = choose_backend(args.attention_backend, device, transformer.dtype, heads, head_dim)
    apply_backend(transformer, backend)
    compiled = should_compile(args.compile, device) and compile_transformer(transformer)
    return {"attention_backend": backend, "compile": compiled}


def lever_flags(args: argparse.Namespace) -> list[str]:
    """The same levers as app.py flags, for the cold start."""
    return [
        *("--offload", args.offload, "--quantize", args.quantize),
        *("--compile", args.compile, "--attention-backend", args.attention_backend),
    ]


def cold_start(
    model_dir: Path, cache: Path, size: int, timeout_s: float, levers: list[str]
) -> dict[str, float]:
    """`app.py --model model_dir` from process start to /ready and to a first image, twice
    (the second start finds whatever the first left in `cache`: the compiled kernels)."""
    from bench.procs import Server

    out: dict[str, float] = {}
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
            *levers,
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

    work = Path(tempfile.mkdtemp(prefix="zimage-bench-"))  # weights, caches: deleted at the end
    try:
        return measure(args, device, dtype, models_dir, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace, device: str, dtype: Any, models_dir: Path, work: Path
) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    weights = work / "weights" if args.cold_start else None  # saved before quantization and hooks
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

    levers = apply_levers(pipe, device, args)

    peak = matmul_peak(device, dtype)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cases: dict[str, dict[str, Any]] = {}
    for size in args.sizes:
        for guidance in args.guidance_scales:
            started = time.perf_counter()  # the first run of a shape compiles, with --compile
            one_image(pipe, device, size, args.steps, 1, args.caption_tokens, guidance)
            first_run = time.perf_counter() - started
            for _ in range(args.warmup - 1):
                one_image(pipe, device, size, args.steps, 1, args.caption_tokens, guidance)
            runs = [
                one_image(pipe, device, size, args.steps, 1, args.caption_tokens, guidance)
                for _ in range(args.runs)
            ]
            p50 = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
            flops = transformer_flops(pipe.transformer, size, int(p50["caption_tokens"]))
            if guidance > 0:  # the negative prompt's forward, with its own caption length
                flops += transformer_flops(pipe.transformer, size, int(p50["negative_tokens"]))
            cases[f"{size}x{size} guidance {guidance:g}"] = {
                "size": size,
                "guidance_scale": guidance,
                "first_run_s": first_run,
                "latency_p50_s": p50,
                "tflop_per_image": flops * args.steps / 1e12,
                "mfu_transformer": flops * args.steps / p50["transformer"] / peak,
            }
    peak_memory = torch.cuda.max_memory_allocated() if device == "cuda" else None

    size = args.sizes[0]
    throughput = {}
    for batch in args.batches:
        one_image(pipe, device, size, args.steps, batch, args.caption_tokens)  # warm this shape
        seconds = statistics.median(
            one_image(pipe, device, size, args.steps, batch, args.caption_tokens)["total"]
            for _ in range(args.batch_runs)
        )
        throughput[batch] = batch / seconds

    main = next(iter(cases.values()))
    p50 = main["latency_p50_s"]
    flops = transformer_flops(pipe.transformer, size, int(p50["caption_tokens"]))
    flops_per_image = flops * args.steps
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "model": "tiny" if args.tiny else "full-size Z-Image-Turbo architecture, random weights",
        "levers": {"offload": args.offload, "quantize": args.quantize, **levers},
        "parameters": params,
        "size": size,
        "steps": args.steps,
        "build_s": build_s,
        "latency_p50_s": p50,
        "cases": cases,
        "service_overheads": {
            str(s): service_overheads(s, args.overhead_runs, work / "overheads") for s in args.sizes
        },
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
        report["cold_start"] = cold_start(weights, work / "cache", size, args.cold_timeout, lever_flags(args))
    return report


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
        rows.append((f"cold start: {name.replace('_', ' ')}", f"{value:.1f} s"))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (for the test suite)")
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    floats = lambda text: [float(v) for v in text.split(",")]  # noqa: E731
    parser.add_argument(
        "--sizes", type=ints, default=[1024, 2048], help="image sides in pixels (default 1024,2048)"
    )
    parser.add_argument(
        "--guidance-scales",
        type=floats,
        default=[0.0, 4.0],
        help="guidance scales per size (default 0,4: Turbo's, and CFG with a masked negative prompt)",
    )
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    parser.add_argument(
        "--caption-tokens", type=int, default=128, help="prompt length in tokens (default 128)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed runs first, the first reported apart (default 2)"
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs for the p50 (default 10)")
    parser.add_argument("--batches", type=ints, default=[1, 2, 4], help="batch sizes at the first size")
    parser.add_argument("--batch-runs", type=int, default=3, help="timed runs per batch size (default 3)")
    parser.add_argument(
        "--overhead-runs", type=int, default=10, help="runs of PNG encoding and storing per size"
    )
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cold-timeout", type=float, default=600.0, help="seconds allowed per cold start")
    parser.add_argument(
        "--models-dir", default="~/.cache/z-image-turbo/models", help="where the tiny model lives"
    )
    # The service's speed levers, as app.py names them (README: CUDA options).
    parser.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto", help="regional torch.compile (auto: CUDA)"
    )
    parser.add_argument(
        "--attention-backend", default="auto", help="auto or a diffusers attention backend name"
    )
    parser.add_argument(
        "--offload",
        choices=["auto", "none", "text-encoder", "model", "sequential"],
        default="auto",
        help="placement, as app.py --offload (default auto: what this GPU's free memory allows)",
    )
    parser.add_argument(
        "--quantize", choices=["none", "fp8"], default="none", help="as app.py --quantize (default none)"
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
