"""The full-size Z-Image-Turbo pipeline with random weights, built from the real
architecture configs (bench/data/z-image-turbo-configs), and its FLOP count: what
bench/gpu.py measures without the weights (speed does not depend on their values)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "bench" / "data" / "z-image-turbo-configs"


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

    from pipeline.fp8 import quantize_fp8
    from pipeline.loading import check_quantize
    from pipeline.meta_memory import memory_needs
    from pipeline.placement import Placement, finish_placement, plan_placement
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
