"""Run app.py with faults injected that this machine cannot cause for real (a broken
GPU) or cannot time (a warm-up that lasts until the test says so). Test-only: the
app never imports it.

    python -m tests.faults app.py [ARGS...]      (from the repository root)

ZIMAGE_FAULT_GATE_WARMUP=PATH   the warm-up waits while PATH exists
ZIMAGE_FAULT_GATE_GENERATION=PATH  each denoising step waits while PATH exists (the
                                engine stays busy, and what comes next stays queued);
                                PATH.reached is created when a step first waits
ZIMAGE_FAULT_DEVICE_ERROR=PATH  while PATH exists, the transformer raises the error
                                CUDA raises after an illegal memory access
ZIMAGE_FAULT_OOM=PATH           while PATH exists, the transformer runs out of memory
ZIMAGE_FAULT_OOM_BATCH_OVER=N   the transformer runs out of memory on batches over N images
ZIMAGE_FAULT_OOM_PIXELS_OVER=N  the transformer runs out of memory on images over N pixels
ZIMAGE_FAULT_DECODE_OOM_BATCH_OVER=N  the VAE runs out of memory decoding over N images at once
ZIMAGE_FAULT_NVIDIA_DRIVER=PATH an NVIDIA driver seems installed (PATH stands for
                                /proc/driver/nvidia/version) beside this CPU-only torch
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gate_warmup(gate: str) -> None:
    from pipeline import warmup

    warm_up = warmup.warm_up

    def gated(*args, **kwargs):
        while os.path.exists(gate):
            time.sleep(0.05)
        warm_up(*args, **kwargs)

    warmup.warm_up = gated


def broken_transformer(
    device_error: str | None,
    oom: str | None,
    oom_batch_over: int | None,
    oom_pixels_over: int | None,
    gate: str | None,
) -> None:
    import torch
    from diffusers import ZImageTransformer2DModel

    forward = ZImageTransformer2DModel.forward

    def broken(self, x, *args, **kwargs):
        if gate and os.path.exists(gate):
            Path(gate + ".reached").touch()  # tells the test a generation is in flight
            while os.path.exists(gate):
                time.sleep(0.05)
        if device_error and os.path.exists(device_error):
            raise RuntimeError(
                "CUDA error: an illegal memory access was encountered\n"
                "CUDA kernel errors might be asynchronously reported at some other API call."
            )
        pixels = x[0].shape[-1] * x[0].shape[-2] * 64  # latents are 1/8 of each side
        if (
            (oom and os.path.exists(oom))
            or (oom_batch_over is not None and len(x) > oom_batch_over)
            or (oom_pixels_over is not None and pixels > oom_pixels_over)
        ):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return forward(self, x, *args, **kwargs)

    ZImageTransformer2DModel.forward = broken


def broken_vae(decode_oom_batch_over: int) -> None:
    import torch
    from diffusers import AutoencoderKL

    decode = AutoencoderKL.decode

    def broken(self, z, *args, **kwargs):
        if len(z) > decode_oom_batch_over:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (injected, decode)")
        return decode(self, z, *args, **kwargs)

    AutoencoderKL.decode = broken


def nvidia_driver(sign: str) -> None:
    import pipeline.loading

    pipeline.loading.NVIDIA_DRIVER_FILES = (Path(sign),)


if __name__ == "__main__":
    if path := os.environ.get("ZIMAGE_FAULT_NVIDIA_DRIVER"):
        nvidia_driver(path)
    if path := os.environ.get("ZIMAGE_FAULT_GATE_WARMUP"):
        gate_warmup(path)
    over = os.environ.get("ZIMAGE_FAULT_OOM_BATCH_OVER")
    pixels_over = os.environ.get("ZIMAGE_FAULT_OOM_PIXELS_OVER")
    broken_transformer(
        os.environ.get("ZIMAGE_FAULT_DEVICE_ERROR"),
        os.environ.get("ZIMAGE_FAULT_OOM"),
        int(over) if over else None,
        int(pixels_over) if pixels_over else None,
        os.environ.get("ZIMAGE_FAULT_GATE_GENERATION"),
    )
    if decode_over := os.environ.get("ZIMAGE_FAULT_DECODE_OOM_BATCH_OVER"):
        broken_vae(int(decode_over))
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(str(ROOT / script), run_name="__main__")
