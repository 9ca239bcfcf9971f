"""`--attention-backend auto` on CUDA without a GPU: torch.cuda's capability and
synchronize mocked, the candidates' kernels replaced by fakes that run on the CPU
(right, wrong, slow, failing), native attention real."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from pipeline import attention, attention_probe

SHAPE = (1, 64, 2, 16)  # the probe's real shape (4,608 tokens of 30x128) is a GPU's work
real_attend = attention_probe.attend


def fake_kernels(monkeypatch: pytest.MonkeyPatch, kernels: dict[str, Any]) -> list[tuple[str, tuple]]:
    """Backends by name: a fake (q, k, v) -> out, or a string (its requirement problem);
    native is real unless faked, and always for the float32 reference. Records every
    call with its input shape and dtype."""
    calls: list[tuple[str, tuple]] = []

    def attend(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append((name, tuple(q.shape), q.dtype))
        if name not in kernels or (name == "native" and q.dtype == torch.float32):
            return real_attend(name, q, k, v)
        return kernels[name](q, k, v)

    def requirement_problem(name: str) -> str | None:
        problem = kernels.get(name)
        return f"unavailable: {problem}" if isinstance(problem, str) else None

    def probe_inputs(device: str, dtype: torch.dtype, heads: int, head_dim: int, tokens: int) -> tuple:
        assert (device, heads, head_dim, tokens) == ("cuda", 30, 128, 4608)  # the model's real shape
        generator = torch.Generator().manual_seed(0)
        return tuple(torch.randn(SHAPE, generator=generator).to(dtype) for _ in range(3))

    monkeypatch.setattr(attention_probe, "attend", attend)
    monkeypatch.setattr(attention_probe, "requirement_problem", requirement_problem)
    monkeypatch.setattr(attention_probe, "probe_inputs", probe_inputs)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return calls


def right_after(seconds: float) -> Any:
    def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return real_attend("native", q, k, v)

    return kernel


def test_auto_times_the_correct_candidates_at_the_real_shape_and_picks_the_fastest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kernels = {
        "_flash_3": lambda q, k, v: v.flip(1),  # runs, fast, but wrong
        "_native_cudnn": right_after(0.0),
        "flash": right_after(0.01),
        "native": right_after(0.02),  # in bfloat16, slower than the fused kernels, as on a GPU
    }
    calls = fake_kernels(monkeypatch, kernels)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with caplog.at_level("INFO", logger="pipeline.attention"):
        assert attention.choose_backend("auto", "cuda", torch.bfloat16, 30, 128) == "_native_cudnn"
    # The reference is native in float32; every candidate runs on the model's dtype.
    assert calls[0] == ("native", SHAPE, torch.float32)
    assert {c for c in calls[1:] if c[2] != torch.bfloat16} == set()
    timed = [name for name, *_ in calls[1:]]
    assert timed.count("_flash_3") == 1  # checked, found wrong, never timed
    assert timed.count("_native_cudnn") == timed.count("flash") == 1 + attention_probe.PROBE_RUNS
    table = caplog.text[caplog.text.index("attention auto, probe 1x64x2x16 torch.bfloat16:") :]
    lines = table.splitlines()[1:5]
    # Hopper's order: FlashAttention-3, cuDNN before FlashAttention-2, native.
    assert [line.split()[0] for line in lines] == ["_flash_3", "_native_cudnn", "flash", "native"]
    assert "wrong: error" in lines[0] and lines[1].endswith("<- chosen")
    assert " ms  error " in lines[2] and " ms  error " in lines[3]


@pytest.mark.parametrize(
    ("capability", "kernels", "chosen", "logged"),
    [
        # Equally fast: the first listed wins; on Hopper cuDNN before FlashAttention-2.
        ((9, 0), {"_flash_3": "no flash_attn_interface"}, "_native_cudnn", ["_flash_3 "]),
        # Before Hopper FlashAttention-2 comes first, and FlashAttention-3 is left out.
        ((8, 9), {}, "flash", ["_flash_3 needs compute capability 9.0 (this GPU: 8.9)"]),
        # A kernel that fails on the real shape is passed over with the reason.
        ((8, 0), {"flash": "no flash-attn"}, "_native_cudnn", ["unavailable: no flash-attn"]),
        (
            (8, 0),
            {"flash": "no flash-attn", "_native_cudnn": None},
            "native",
            ["failed: RuntimeError: cuDNN"],
        ),
    ],
)
def test_auto_order_and_why_a_candidate_is_passed_over(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capability: tuple[int, int],
    kernels: dict[str, Any],
    chosen: str,
    logged: list[str],
) -> None:
    def cudnn_fails(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cuDNN Frontend error: no kernel for this shape")

    fakes = {"_flash_3": right_after(0.0), "_native_cudnn": right_after(0.0), "flash": right_after(0.0)}
    fakes |= {name: cudnn_fails if kernel is None else kernel for name, kernel in kernels.items()}
    # Ties decided by the order alone: every candidate's time reads the same.
    monkeypatch.setattr(attention_probe.statistics, "median", lambda times: 1.0)
    fake_kernels(monkeypatch, fakes)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    with caplog.at_level("INFO", logger="pipeline.attention"):
        assert attention.choose_backend("auto", "cuda", torch.bfloat16, 30, 128) == chosen
    for line in logged:
        assert line in caplog.text
    assert f"{chosen} " in caplog.text and "<- chosen" in caplog.text


def test_auto_is_native_off_cuda_and_the_probe_reports_why_a_backend_cannot_run() -> None:
    assert attention.choose_backend("auto", "cpu", torch.float32, 2, 16) == "native"
    assert attention.backend_problem("native", "cpu", torch.float32, 2, 16) is None
    problem = attention.backend_problem("flash", "cpu", torch.float32, 2, 16)
    assert problem is not None and "flash-attn" in problem
    # A kernel that runs but is wrong is refused too (the real probe on the CPU).
    q, k, v = attention_probe.probe_inputs("cpu", torch.float32, 2, 16, 32)
    [result] = attention_probe.probe(["_native_math"], q, k, v)
    assert result.usable and result.error is not None and result.error < 1e-5
