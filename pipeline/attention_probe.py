"""`--attention-backend auto`'s probe: run each candidate kernel on the shape the model
really attends over, keep those whose output matches native attention, time them, and
pick the fastest.

A 1024x1024 image is 4,096 image tokens, and the caption adds up to 512: the probe
attends over PROBE_TOKENS = 4,608 tokens with the model's heads, in its dtype. A kernel
that merely runs on a tiny shape can still fail there (shared-memory limits,
unsupported head sizes) or be slow there, so neither is judged on a toy shape. Each
candidate's output is compared with native SDPA computed in float32 on the same
inputs; a candidate whose largest error exceeds `tolerance(dtype)` of the reference's
largest value is wrong and never chosen. The table of every candidate (time, error,
or why it was passed over) is logged.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pipeline.attention")

NATIVE = "native"
# A 1024x1024 image (64x64 patches of 2x2 latents of 8x8 pixels) and a full caption.
PROBE_TOKENS = 4096 + 512
# Timed runs per candidate after one untimed run (kernel selection, lazy init): the median counts.
PROBE_RUNS = 5


@dataclass(frozen=True)
class ProbeResult:
    """One candidate's line of the table: its median time (seconds) and relative error
    when it ran, else why it was passed over."""

    name: str
    seconds: float | None = None
    error: float | None = None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None and self.seconds is not None

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.name:<14} {self.problem}"
        return f"{self.name:<14} {self.seconds * 1e3:8.2f} ms  error {self.error:.1e}"


def tolerance(dtype: Any) -> float:
    """The largest relative error a correct kernel shows: a few units of the last place
    of 16-bit floats (bf16: 2^-8), tighter in float32."""
    return 2e-2 if dtype.itemsize == 2 else 1e-3


def requirement_problem(name: str) -> str | None:
    """Why diffusers cannot run backend `name` here (a missing package), or None."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
        _maybe_download_kernel_for_backend,
    )

    backend = AttentionBackendName(name)
    try:
        _check_attention_backend_requirements(backend)
        _maybe_download_kernel_for_backend(backend)  # hub kernels only, as set_attention_backend does
    except Exception as exc:  # any failure means "not this one": the reason is logged
        return f"unavailable: {first_line(exc)}"
    return None


def attend(name: str, q: Any, k: Any, v: Any) -> Any:
    """Attention of (batch, tokens, heads, head_dim) tensors through backend `name`."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    return dispatch_attention_fn(q, k, v, backend=AttentionBackendName(name))


def probe_inputs(device: str, dtype: Any, heads: int, head_dim: int, tokens: int) -> tuple[Any, Any, Any]:
    """Seeded random queries, keys and values of the model's attention shape."""
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (1, tokens, heads, head_dim)
    return tuple(torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3))


def probe(
    names: list[str], q: Any, k: Any, v: Any, synchronize: Callable[[], None] = lambda: None
) -> list[ProbeResult]:
    """Run, check and time each of `names` on (q, k, v); `synchronize` waits for the
    device (torch.cuda.synchronize), so a time covers the kernel, not its launch."""
    reference = attend(NATIVE, q.float(), k.float(), v.float())
    scale = reference.abs().max().item() or 1.0
    results = []
    for name in names:
        problem = requirement_problem(name)
        if problem is not None:
            results.append(ProbeResult(name, problem=problem))
            continue
        try:
            error = (attend(name, q, k, v).float() - reference).abs().max().item() / scale
            if error > tolerance(q.dtype):
                results.append(ProbeResult(name, error=error, problem=f"wrong: error {error:.1e} vs native"))
                continue
            times = []
            for _ in range(PROBE_RUNS):
                synchronize()
                start = time.perf_counter()
                attend(name, q, k, v)
                synchronize()
                times.append(time.perf_counter() - start)
        except Exception as exc:  # a kernel that fails on this shape is passed over
            results.append(ProbeResult(name, problem=f"failed: {first_line(exc)}"))
            continue
        results.append(ProbeResult(name, statistics.median(times), error))
    return results


def fastest(results: list[ProbeResult]) -> str:
    """The fastest correct candidate (the first listed on a tie); native if none is."""
    usable = [r for r in results if r.usable]
    return min(usable, key=lambda r: r.seconds).name if usable else NATIVE


def log_table(results: list[ProbeResult], chosen: str, shape: tuple[int, ...], dtype: Any) -> None:
    lines = [f"  {r.describe()}{'  <- chosen' if r.name == chosen else ''}" for r in results]
    log.info("attention auto, probe %s %s:\n%s", "x".join(map(str, shape)), dtype, "\n".join(lines))


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
