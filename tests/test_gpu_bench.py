"""bench/gpu.py: its CPU form with the tiny model, and the FLOP count of the full-size model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.full_model import CONFIGS, transformer_flops
from tests.conftest import ROOT


def test_the_gpu_benchmark_runs_on_the_cpu_with_the_tiny_model(tmp_path: Path) -> None:
    out, scratch = tmp_path / "gpu.json", tmp_path / "tmp"
    scratch.mkdir()
    args = [
        "--tiny",
        "--sizes",
        "256",
        "--guidance-scales",
        "0,3",
        "--attention-backend",
        "_native_flash",
        "--overhead-runs",
        "2",
        "--warmup",
        "1",
        "--runs",
        "2",
        "--batches",
        "1,2",
        "--batch-runs",
        "1",
    ]
    args += ["--models-dir", str(tmp_path / "models"), "--out", str(out), "--cold-timeout", "240"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MFU" in result.stdout and "cold start: first start ready s" in result.stdout

    report = json.loads(out.read_text())
    p50 = report["latency_p50_s"]
    assert all(p50[stage] > 0 for stage in ("text_encoder", "transformer", "vae_decode"))
    assert (
        abs(p50["total"] - (p50["text_encoder"] + p50["transformer"] + p50["vae_decode"]))
        < 0.5 * p50["total"]
    )
    assert p50["caption_tokens"] == 128  # a realistic prompt length, whatever the tokenizer
    assert report["levers"] == {
        "offload": "auto",
        "quantize": "none",
        "attention_backend": "_native_flash",
        "compile": False,
    }
    cases = report["cases"]
    assert set(cases) == {"256x256 guidance 0", "256x256 guidance 3"}
    guided = cases["256x256 guidance 3"]
    assert guided["latency_p50_s"]["negative_tokens"] > 0  # CFG with the masked negative prompt ran
    assert guided["tflop_per_image"] > 1.5 * cases["256x256 guidance 0"]["tflop_per_image"]
    overheads = report["service_overheads"]["256"]
    assert overheads["png_bytes"] > 256 * 256 * 3  # noise does not compress
    assert min(overheads["encode_png_s"], overheads["store_memory_s"], overheads["store_disk_s"]) > 0
    assert set(report["images_per_s"]) == {"1", "2"} and min(report["images_per_s"].values()) > 0
    assert report["transformer_forward_tflop"] > 0 and report["matmul_peak_tflops"] > 0
    assert 0 < report["mfu_transformer"] < 1 and 0 < report["mfu_end_to_end"] <= report["mfu_transformer"]
    cold = report["cold_start"]
    assert 0 < cold["first_start_ready_s"] <= cold["first_start_first_image_s"]
    assert 0 < cold["restart_ready_s"] <= cold["restart_first_image_s"]
    assert not list(scratch.glob("zimage-*")), "the weights and caches it wrote are removed"


def test_one_full_size_transformer_forward_at_1024_is_about_57_tflop() -> None:
    from diffusers import ZImageTransformer2DModel

    config = json.loads((CONFIGS / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        transformer = ZImageTransformer2DModel.from_config(config)
    assert 6.1e9 < sum(p.numel() for p in transformer.parameters()) < 6.2e9
    flops = transformer_flops(transformer, 1024, caption_tokens=128)
    assert 56e12 < flops < 58e12
    # 4,096 image tokens: quadrupling the pixels (2048x2048) costs more than 4x (attention)
    assert transformer_flops(transformer, 2048, caption_tokens=128) > 4 * flops


def test_the_full_size_pipeline_builds_in_bfloat16_without_a_float32_copy(tmp_path: Path) -> None:
    # The CUDA path's builder, on the meta device: shapes and dtypes, no memory.
    from bench.full_model import build_full_pipeline

    pipe = build_full_pipeline(CONFIGS, "meta", tmp_path / "models")
    sizes = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("transformer", "text_encoder", "vae")
    }
    assert 6.15e9 < sizes["transformer"] < 6.16e9 and 4.02e9 < sizes["text_encoder"] < 4.03e9
    assert 8.3e7 < sizes["vae"] < 8.5e7
    for name in ("transformer", "text_encoder", "vae"):
        assert {p.dtype for p in getattr(pipe, name).parameters()} == {torch.bfloat16}
        assert {p.device.type for p in getattr(pipe, name).parameters()} == {"meta"}
    assert torch.get_default_dtype() == torch.float32  # restored for everything else


def test_a_bare_gpu_box_run_keeps_each_measurement_skips_the_cold_start_and_frees_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As on a borrowed GPU box: no gradio/fastapi, killed before the end."""
    import weakref

    from bench import full_model, gpu

    out = tmp_path / "gpu.json"
    args = ["--tiny", "--sizes", "128", "--guidance-scales", "0,2", "--warmup", "1", "--runs", "1"]
    args += ["--batches", "1", "--batch-runs", "1", "--overhead-runs", "1"]
    args += ["--models-dir", str(tmp_path / "models"), "--out", str(out)]
    grad_enabled: list[bool] = []
    pipes: list[weakref.ref] = []
    build = full_model.build_tiny_pipeline

    def built(*a, **kw):  # type: ignore[no-untyped-def]
        pipe = build(*a, **kw)
        encode = pipe.encode_prompt
        pipe.encode_prompt = lambda **k: grad_enabled.append(torch.is_grad_enabled()) or encode(**k)
        pipes.append(weakref.ref(pipe.transformer))
        return pipe

    monkeypatch.setattr(gpu, "build_tiny_pipeline", built)
    monkeypatch.setattr(gpu, "missing_for_cold_start", lambda: ["fastapi", "gradio"])
    assert gpu.main(args) == 0
    report = json.loads(out.read_text())
    assert report["cold_start"] == {"skipped": "app.py needs fastapi, gradio, not installed here"}
    assert "cold start skipped: app.py needs fastapi, gradio" in capsys.readouterr().out
    assert grad_enabled and not any(grad_enabled)  # the text encoder ran under no_grad
    assert pipes[0]() is None  # the weights were freed before the cold start would run

    # Killed during the service overheads: what was measured before is on disk.
    out.unlink()
    monkeypatch.setattr(gpu, "service_overheads", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        gpu.main(args)
    kept = json.loads(out.read_text())
    assert set(kept["cases"]) == {"128x128 guidance 0", "128x128 guidance 2"} and kept["images_per_s"]
    assert kept["latency_p50_s"]["transformer"] > 0 and "service_overheads" not in kept


def test_quick_is_one_size_five_runs_three_batches_and_no_cold_start() -> None:
    from bench.gpu import parse

    quick = parse(["--quick"])
    assert (quick.sizes, quick.runs, quick.batches, quick.cold_start) == ([1024], 5, [1, 2, 4], False)
    assert quick.guidance_scales == [0.0, 4.0]
