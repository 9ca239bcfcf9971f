"""--quantize fp8 without a GPU: the device check, the key, and torchao's real float8
quantization of the tiny transformer on the CPU (torchao's hardware check mocked)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.encoding import generation_parameters
from pipeline.engine import Engine, EngineState
from pipeline.loading import ModelOptions, check_quantize, resolve_model
from pipeline.meta_memory import module_bytes
from pipeline.placement import Placement, load_placed
from pipeline.request import CanonicalRequest
from pipeline.service import GenerationService


@contextmanager
def hopper(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch.cuda answering like an H100 (compute capability 9.0) on a CUDA build."""
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        m.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
        m.setattr(torch.version, "cuda", "12.8")
        yield


def test_fp8_is_refused_where_the_device_cannot_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"needs a CUDA GPU of compute capability 8.9 .*serves on the CPU"):
        check_quantize("fp8", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"NVIDIA A100-SXM4-80GB is 8.0. Use --quantize none"):
        check_quantize("fp8", "cuda")
    check_quantize("none", "cpu")  # nothing to check


def test_fp8_needs_torchao(monkeypatch: pytest.MonkeyPatch) -> None:
    with hopper(monkeypatch):
        check_quantize("fp8", "cuda")  # torchao is installed here
        monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not
        with pytest.raises(ValueError, match=r"needs torchao: pip install 'z-image-turbo-service\[fp8\]'"):
            check_quantize("fp8", "cuda")


def test_an_engine_asked_for_fp8_on_the_cpu_fails_with_the_reason(tmp_path: Path) -> None:
    engine = Engine("tiny", tmp_path / "models", options=ModelOptions(quantize="fp8"))
    engine.start()
    with pytest.raises(Exception, match="--quantize fp8 needs a CUDA GPU"):
        engine.identity_future.result(timeout=60)
    assert engine.state == EngineState.FAILED and "--quantize fp8 needs a CUDA GPU" in (engine.error or "")
    engine.close(10)


def test_fp8_and_unquantized_images_never_share_a_key(tmp_path: Path) -> None:
    identity = resolve_model("tiny", tmp_path / "models")
    fp8 = dataclasses.replace(identity, quantize="fp8")
    request = CanonicalRequest("a red fox", "", 42, 1024, 1024, 8, 0.0)
    assert GenerationService.key_for(request, identity) != GenerationService.key_for(request, fp8)
    assert fp8.key_fields()["quantize"] == "fp8" and identity.key_fields()["quantize"] == "none"
    # The image files say so too (unquantized ones unchanged).
    assert generation_parameters(request, fp8)["quantize"] == "fp8"
    assert "quantize" not in generation_parameters(request, identity)


def test_torchao_quantizes_the_transformer_to_float8_as_the_estimate_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = resolve_model("tiny", tmp_path / "models").path
    plan = Placement("none", "cpu", "test")
    plain = load_placed(model_dir, torch.bfloat16, plan)  # as on CUDA (torchao row-wise fp8 needs bf16)
    estimate = module_bytes(plain.transformer, fp8=True)
    with hopper(monkeypatch):
        quantized = load_placed(model_dir, torch.bfloat16, plan, quantize="fp8")

    from torchao.quantization import Float8Tensor

    linears = [m for m in quantized.transformer.modules() if isinstance(m, torch.nn.Linear)]
    float8 = [m.weight for m in linears if isinstance(m.weight, Float8Tensor)]
    assert float8 and {w.qdata.dtype for w in float8} == {torch.float8_e4m3fn}
    assert {tuple(w.scale.shape) for w in float8} == {(w.shape[0], 1) for w in float8}  # one scale a row
    actual = sum(
        w.qdata.numel() + w.scale.numel() * 4 if isinstance(w, Float8Tensor) else w.numel() * w.element_size()
        for w in (*quantized.transformer.parameters(), *quantized.transformer.buffers())
    )
    assert actual == estimate < module_bytes(plain.transformer)

    # It runs, and changes the pixels: hence quantize in the key.
    def image(pipe: object) -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(7)
        return pipe(  # type: ignore[operator]
            prompt="a red fox",
            height=128,
            width=128,
            num_inference_steps=2,
            guidance_scale=0.0,
            generator=generator,
            output_type="np",
        ).images[0]

    a, b = image(plain), image(quantized)
    assert np.isfinite(b).all() and not np.array_equal(a, b)


def test_the_gpu_benchmark_refuses_fp8_as_the_service_does(tmp_path: Path) -> None:
    from bench.full_model import CONFIGS, build_full_pipeline
    from bench.gpu import main

    with pytest.raises(ValueError, match="--quantize fp8 needs a CUDA GPU"):
        build_full_pipeline(CONFIGS, "meta", tmp_path / "models", quantize="fp8")
    with pytest.raises(ValueError, match="--quantize fp8 needs a CUDA GPU"):
        main(["--tiny", "--quantize", "fp8", "--no-cold-start", "--models-dir", str(tmp_path / "models")])
