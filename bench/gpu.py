"""GPU benchmark: the full-size Z-Image-Turbo pipeline, 8 steps, at 1024x1024 and 2048x2048,
without and with guidance, with the service's speed levers chosen by flags.

    python -m bench.gpu            on CUDA: the real architecture (bench/data/
                                   z-image-turbo-configs) with random bf16 weights, built
                                   directly on the GPU; speed does not depend on weight values
    python -m bench.gpu --quick    1024x1024, 5 runs, batches 1, 2, 4, no cold start (< 5 min on an H100)
    python -m bench.gpu --tiny     the same code on the CPU with the tiny model (the suite runs it)
    python -m bench.gpu --compile off --attention-backend native    one lever against another
                                   (--offload, --quantize, --compile, --attention-backend:
                                   the service's levers, as app.py names them)

Measures, in one run: warm latency p50 per size and guidance scale with the text
encoder (over the prompt's real tokens, as the engine), the transformer (all steps) and the
VAE decode timed apart, and the first (warm-up, compiling) run; the service's own
overheads per size (PNG encoding with the parameters inside, and storing to the
memory and disk tiers); peak device memory; images/s at each batch size; cold start
(weights saved as safetensors -> `app.py --model DIR` with the same levers -> /ready
-> first image, then the same again as a restart; the weights are deleted after);
the FLOPs of the transformer (counted by torch's FlopCounterMode on the meta device,
so they are known before anything runs) and the measured matmul peak of the device in
the same run, hence MFU. Writes the JSON after every measurement (a run killed midway
keeps what it measured) and prints a table at the end (bench/gpu_report.py). The cold
start needs app.py's packages (fastapi, gradio, uvicorn); without them it is skipped,
saying so. docs/PERFORMANCE.md says how to run it on a bare GPU box
(bench/gpu_wheels.py gathers the wheels to carry).

One benchmark run, its measurements side by side, is one concept here, which is
why this module runs past 300 lines; the model it builds is bench/full_model.py's.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from bench.full_model import CONFIGS, ROOT, build_full_pipeline, build_tiny_pipeline, transformer_flops
from bench.gpu_report import render
from pipeline.compile import CompileSetting
from pipeline.loading import Quantize
from pipeline.placement import Offload

RESULTS = ROOT / "bench" / "results"
# A long prompt. The text encoder runs its real tokens, as the engine does (no longer
# padded to 512); the transformer gets its first --caption-tokens tokens
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

    from pipeline.placement import text_encoder_device
    from pipeline.rendering import count_tokens, decode_latents

    timings: dict[str, float] = {}
    started = time.perf_counter()

    def encode(text: str) -> list[Any]:
        # As the engine does: encode_prompt is not under no_grad, and without it the
        # embeddings keep the text encoder's autograd graph, inflating the peak memory.
        with torch.no_grad():
            embeds = pipe.encode_prompt(
                prompt=text,
                device=text_encoder_device(pipe),  # the CPU under --offload text-encoder
                do_classifier_free_guidance=False,
                max_sequence_length=count_tokens(pipe.tokenizer, text),  # its real tokens, as the engine
            )[0]
        return [e.to(device) for e in embeds]

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
    pixels = decode_latents(pipe, latents)  # ends on the CPU, so it is synchronised
    timings["vae_decode"] = time.perf_counter() - started
    check_finite(pixels, f"{size}x{size}, batch {batch}, guidance {guidance:g}")
    timings["total"] = sum(timings.values())
    timings["caption_tokens"] = int(embeds[0].shape[0])
    timings["negative_tokens"] = int(negative[0].shape[0]) if negative else 0
    return timings


class NonFiniteImage(RuntimeError):
    """A measured image has NaN or infinite values: its timings measure a broken model."""


def check_finite(pixels: Any, case: str) -> None:
    """Raise NonFiniteImage unless every value of the decoded `pixels` is finite."""
    import numpy as np

    if not np.isfinite(pixels).all():
        raise NonFiniteImage(f"the {case} image has NaN or infinite values; its figures would mean nothing")


def service_overheads(size: int, runs: int, work_dir: Path) -> dict[str, float]:
    """What the service adds to a generation at `size`: encoding the PNG (with the
    parameters inside, on the encoding pool) and storing it in the memory and disk
    tiers, p50 over `runs`, on a noise image (PNG's worst case: it compresses least)."""
    import numpy as np

    from cache import DEFAULT_NAMESPACE, DiskTier, Entry, MemoryTier
    from pipeline.encoding import encode_image
    from pipeline.loading import ModelIdentity
    from pipeline.request import CanonicalRequest

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    request = CanonicalRequest(PROMPT[:200], "", 42, size, size, 8, 0.0)
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
        memory.put(DEFAULT_NAMESPACE, key, entry)
        store_memory.append(time.perf_counter() - started)
        started = time.perf_counter()
        disk.put(DEFAULT_NAMESPACE, key, entry)
        store_disk.append(time.perf_counter() - started)
    return {
        "png_bytes": len(data),
        "encode_png_s": statistics.median(encode),
        "store_memory_s": statistics.median(store_memory),
        "store_disk_s": statistics.median(store_disk),
    }


def apply_levers(pipe: Any, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """The service's speed levers, applied as the engine applies them after loading."""
    from pipeline.speed import apply_speed_levers

    # After placement (--offload) and --quantize, which the builders apply: the attention
    # backend and compilation act on the transformer as placed and quantised.
    levers = apply_speed_levers(
        pipe.transformer, device, attention_backend=args.attention_backend, compile=args.compile
    )
    return {"attention_backend": levers.attention, "compile": levers.compiled}


def lever_flags(args: argparse.Namespace) -> list[str]:
    """The same levers as app.py flags, for the cold start."""
    return [
        *("--offload", args.offload, "--quantize", args.quantize),
        *("--compile", args.compile, "--attention-backend", args.attention_backend),
    ]


# What `app.py` (the cold start) imports beyond what the rest of the bench needs; a
# bare GPU box often lacks them, and the cold start is then skipped, saying so.
COLD_START_PACKAGES = ("fastapi", "gradio", "uvicorn")


def missing_for_cold_start() -> list[str]:
    """The packages app.py needs that are not installed here."""
    import importlib.util

    return [name for name in COLD_START_PACKAGES if importlib.util.find_spec(name) is None]


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


Save = Callable[[dict[str, Any]], None]


def run(args: argparse.Namespace, save: Save) -> dict[str, Any]:
    """Measure as `args` say; `save(report)` is called after every measurement with
    what is known so far, so a run killed midway keeps it."""
    import torch

    if args.tiny:
        device, dtype = "cpu", torch.float32
    elif torch.cuda.is_available():
        from pipeline.loading import check_bf16_gpu

        check_bf16_gpu()  # as the service: no run outside the memory plan on a T4 or V100
        device, dtype = "cuda", torch.bfloat16
    else:
        raise SystemExit("python -m bench.gpu: no CUDA device here; run with --tiny for the CPU version")
    models_dir = Path(args.models_dir).expanduser()

    work = Path(tempfile.mkdtemp(prefix="zimage-bench-"))  # weights, caches: deleted at the end
    try:
        return measure(args, device, dtype, models_dir, work, save)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace, device: str, dtype: Any, models_dir: Path, work: Path, save: Save
) -> dict[str, Any]:
    import torch

    cold = args.cold_start and not missing_for_cold_start()
    started = time.perf_counter()
    weights = work / "weights" if cold else None  # saved before quantization and hooks
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
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "model": "tiny" if args.tiny else "full-size Z-Image-Turbo architecture, random weights",
        "levers": {"offload": args.offload, "quantize": args.quantize, **levers},
        "parameters": params,
        "size": args.sizes[0],
        "steps": args.steps,
        "build_s": build_s,
        "matmul_peak_tflops": peak / 1e12,
        "cases": {},
        "versions": {"torch": torch.__version__},
    }
    save(report)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cases: dict[str, dict[str, Any]] = report["cases"]
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
            forward = transformer_flops(pipe.transformer, size, int(p50["caption_tokens"]))
            flops = forward
            if guidance > 0:  # the negative prompt's forward, with its own caption length
                flops += transformer_flops(pipe.transformer, size, int(p50["negative_tokens"]))
            cases[f"{size}x{size} guidance {guidance:g}"] = {
                "size": size,
                "guidance_scale": guidance,
                "first_run_s": first_run,
                "latency_p50_s": p50,
                "forward_flop": forward,  # the positive prompt's forward, once
                "tflop_per_image": flops * args.steps / 1e12,
                "mfu_transformer": flops * args.steps / p50["transformer"] / peak,
            }
            if len(cases) == 1:  # the headline figures: the first case's
                flops_per_image = forward * args.steps
                report.update(
                    {
                        "latency_p50_s": p50,
                        "transformer_forward_tflop": forward / 1e12,
                        "tflop_per_image": flops_per_image / 1e12,
                        "mfu_transformer": flops_per_image / p50["transformer"] / peak,
                        "mfu_end_to_end": flops_per_image / p50["total"] / peak,
                    }
                )
            report["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else None
            save(report)

    size = args.sizes[0]
    report["images_per_s"] = throughput = {}
    for batch in args.batches:
        one_image(pipe, device, size, args.steps, batch, args.caption_tokens)  # warm this shape
        seconds = statistics.median(
            one_image(pipe, device, size, args.steps, batch, args.caption_tokens)["total"]
            for _ in range(args.batch_runs)
        )
        throughput[batch] = batch / seconds
        save(report)

    report["service_overheads"] = overheads = {}
    for s in args.sizes:
        overheads[str(s)] = service_overheads(s, args.overhead_runs, work / "overheads")
        save(report)

    del pipe
    gc.collect()  # the pipeline's modules hold reference cycles: without this the weights stay
    if device == "cuda":
        torch.cuda.empty_cache()
    if weights is not None:
        report["cold_start"] = cold_start(weights, work / "cache", size, args.cold_timeout, lever_flags(args))
    elif args.cold_start:
        missing = ", ".join(missing_for_cold_start())
        report["cold_start"] = {"skipped": f"app.py needs {missing}, not installed here"}
        print(f"cold start skipped: app.py needs {missing}, not installed here", flush=True)
    save(report)
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--quick` sets its sizes, runs, batches and cold start."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
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
        "--compile",
        choices=get_args(CompileSetting),
        default="auto",
        help="regional torch.compile (auto: CUDA)",
    )
    parser.add_argument(
        "--attention-backend", default="auto", help="auto or a diffusers attention backend name"
    )
    parser.add_argument(
        "--offload",
        choices=get_args(Offload),
        default="auto",
        help="placement, as app.py --offload (default auto: what this GPU's free memory allows)",
    )
    parser.add_argument(
        "--quantize", choices=get_args(Quantize), default="none", help="as app.py --quantize (default none)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/gpu-<device>.json)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1024x1024 only, 5 runs, batches 1, 2 and 4, no cold start: within 5 minutes on an H100",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.runs, args.batches, args.cold_start = [1024], 5, [1, 2, 4], False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def save(report: dict[str, Any]) -> None:
        out = (
            args.out
            or RESULTS / f"gpu-{'tiny-cpu' if args.tiny else report['device'].replace(' ', '-')}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".part")
        partial.write_text(json.dumps(report, indent=2))
        partial.replace(out)  # a reader never sees half a file
        save.path = out  # type: ignore[attr-defined]

    report = run(args, save)
    print(render(report))
    print(f"\nwrote {save.path}")  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
