"""--quantize fp8 without a GPU: the device check, the key, which layers, and torchao's real
float8 quantization of the tiny transformer on the CPU, where torch emulates float8 matmuls."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.full_model import CONFIGS
from pipeline.encoding import generation_parameters
from pipeline.engine import Engine
from pipeline.fp8 import ACTIVATION_LOWER_BOUND, fp8_config, is_fp8_target
from pipeline.loading import ModelOptions, check_quantize, resolve_model
from pipeline.meta_memory import build_on_meta, module_bytes
from pipeline.placement import Placement, load_placed
from pipeline.request import CanonicalRequest
from pipeline.service import GenerationService
from tests.engines import LONG_NEGATIVE, pixels, started

CPU = Placement("none", "cpu", "test")


@contextmanager
def hopper(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch.cuda answering like an H100 (compute capability 9.0) on a CUDA build."""
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        m.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
        m.setattr(torch.version, "cuda", "12.8")
        yield


def test_fp8_is_refused_on_a_gpu_that_cannot_run_it_and_emulated_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"NVIDIA A100-SXM4-80GB is 8.0. Use --quantize none"):
        check_quantize("fp8", "cuda")
    with caplog.at_level("WARNING"):
        check_quantize("fp8", "cpu")
    assert "float8 matmuls are emulated there" in caplog.text
    check_quantize("none", "cpu")  # nothing to check


def test_fp8_needs_torchao(monkeypatch: pytest.MonkeyPatch) -> None:
    with hopper(monkeypatch):
        check_quantize("fp8", "cuda")  # torchao is installed here
        monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not
        with pytest.raises(ValueError, match=r"needs torchao: pip install 'z-image-turbo-service\[fp8\]'"):
            check_quantize("fp8", "cuda")


def caption_tokens(model_dir: Path, text: str) -> int:
    """How many tokens the pipeline's chat template makes of `text` (its caption's length)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    messages = [{"role": "user", "content": text}]
    chat = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    return len(tokenizer(chat).input_ids)


@pytest.fixture(scope="module")
def fp8_engine(models_dir: Path) -> Iterator[Engine]:
    """A tiny-model engine with --quantize fp8 on the CPU (torch emulates the float8 matmuls)."""
    engine = started(Engine("tiny", models_dir, options=ModelOptions(quantize="fp8")))
    yield engine
    engine.close()


@pytest.mark.parametrize(
    ("negative", "guidance"),
    [
        ("", 0.0),  # unguided: one caption, no padding
        ("a tan dog on a snowy hill", 4.0),  # guided, the negative as long as the prompt
        (LONG_NEGATIVE, 4.0),  # guided, longer: the prompt is padded with zero rows
        ("", 4.0),  # guided, shorter: the negative is padded (the service's default)
    ],
)
def test_fp8_images_are_finite_with_or_without_guidance_and_any_prompt_lengths(
    fp8_engine: Engine, negative: str, guidance: float
) -> None:
    identity = fp8_engine.identity
    assert identity is not None and (identity.quantize, identity.dtype) == ("fp8", "bfloat16")
    prompt = "a red fox on a snowy hill"
    equal = caption_tokens(identity.path, negative) == caption_tokens(identity.path, prompt)
    assert equal == (negative == "a tan dog on a snowy hill")  # the cases are what they say
    request = CanonicalRequest(prompt, negative, 7, 128, 128, 2, guidance)
    # finish_images refuses NaN (GenerationFailed), so an image is a finite one.
    [image] = fp8_engine.submit([request], embedding_scope=None).result(timeout=120)
    values = pixels(image.data)
    assert values.shape == (128, 128, 3) and values.std() > 0


def test_fp8_quantizes_only_the_blocks_attention_and_feed_forward_and_leaves_inductor_alone(
    tmp_path: Path,
) -> None:
    import torch._inductor.config as inductor
    from torchao.quantization import Float8Tensor

    settings = {name: getattr(inductor, name) for name in ("coordinate_descent_tuning", "epilogue_fusion")}
    pipe = load_placed(resolve_model("tiny", tmp_path / "models").path, torch.bfloat16, CPU, quantize="fp8")
    assert {name: getattr(inductor, name) for name in settings} == settings  # no process-wide change

    linears = {n: m for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = {n for n, m in linears.items() if isinstance(m.weight, Float8Tensor)}
    expected = {
        n
        for n, m in linears.items()
        if n.split(".")[0] in ("noise_refiner", "context_refiner", "layers")
        and n.split(".")[2] in ("attention", "feed_forward")
        and m.in_features % 16 == m.out_features % 16 == 0  # the tiny feed-forward's 85 is not
    }
    assert quantized == expected and any(n.startswith("layers.") for n in quantized)
    kept = set(linears) - quantized  # the embedders, adaLN and the final layer, in bfloat16
    assert any(n.startswith("t_embedder") for n in kept) and any(n.startswith("cap_embedder") for n in kept)
    assert any("adaLN_modulation" in n for n in kept) and any(n.startswith("all_x_embedder") for n in kept)
    assert any(n.startswith("all_final_layer") for n in kept)
    assert {linears[n].weight.dtype for n in kept} == {torch.bfloat16}
    lower_bounds = {linears[n].weight.act_quant_kwargs.hp_value_lb for n in quantized}
    assert lower_bounds == {ACTIVATION_LOWER_BOUND}
    # The full-size model: every block's 4 attention and 3 feed-forward linears, nothing else.
    full = build_on_meta(CONFIGS, "transformer", torch.bfloat16)
    targets = [n for n, m in full.named_modules() if is_fp8_target(n, m)]
    assert len(targets) == (2 + 2 + 30) * 7 and all(
        ".attention." in n or ".feed_forward." in n for n in targets
    )


def test_fp8_weights_equal_torchaos_own_quantize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchao.quantization import quantize_

    model_dir = resolve_model("tiny", tmp_path / "models").path
    ours = load_placed(model_dir, torch.bfloat16, CPU, quantize="fp8").transformer
    theirs = load_placed(model_dir, torch.bfloat16, CPU).transformer
    with hopper(monkeypatch):  # quantize_ asserts a GPU of compute capability 8.9
        quantize_(theirs, fp8_config(), filter_fn=lambda module, name: is_fp8_target(name, module))
    ours_weights, their_weights = dict(ours.named_parameters()), dict(theirs.named_parameters())
    for name, weight in ours_weights.items():
        other = their_weights[name]
        assert type(weight) is type(other), name
        if hasattr(weight, "qdata"):
            assert torch.equal(weight.qdata.view(torch.uint8), other.qdata.view(torch.uint8)), name
            assert (
                torch.equal(weight.scale, other.scale) and weight.act_quant_kwargs == other.act_quant_kwargs
            )
        else:
            assert torch.equal(weight, other), name


def test_fp8_and_unquantized_images_never_share_a_key(tmp_path: Path) -> None:
    identity = resolve_model("tiny", tmp_path / "models")
    fp8 = dataclasses.replace(identity, quantize="fp8")
    request = CanonicalRequest("a red fox", "", 42, 1024, 1024, 8, 0.0)
    assert GenerationService.key_for(request, identity) != GenerationService.key_for(request, fp8)
    assert fp8.key_fields()["quantize"] == "fp8" and identity.key_fields()["quantize"] == "none"
    # The image files say so too (unquantized ones unchanged).
    assert generation_parameters(request, fp8)["quantize"] == "fp8"
    assert "quantize" not in generation_parameters(request, identity)


def test_torchao_quantizes_the_transformer_to_float8_as_the_estimate_says(tmp_path: Path) -> None:
    model_dir = resolve_model("tiny", tmp_path / "models").path
    plain = load_placed(model_dir, torch.bfloat16, CPU)  # as on CUDA (torchao row-wise fp8 needs bf16)
    estimate = module_bytes(plain.transformer, fp8=True)
    quantized = load_placed(model_dir, torch.bfloat16, CPU, quantize="fp8")

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


def test_the_gpu_benchmark_runs_fp8_on_the_cpu_and_fails_on_a_non_finite_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import gpu

    out = tmp_path / "gpu.json"
    args = ["--tiny", "--quantize", "fp8", "--no-cold-start", "--sizes", "128", "--guidance-scales", "0,4"]
    args += ["--warmup", "1", "--runs", "1", "--batches", "1", "--batch-runs", "1", "--overhead-runs", "1"]
    args += ["--models-dir", str(tmp_path / "models"), "--out", str(out)]
    assert gpu.main(args) == 0
    report = json.loads(out.read_text())
    assert report["levers"]["quantize"] == "fp8" and set(report["cases"]) == {
        "128x128 guidance 0",
        "128x128 guidance 4",
    }
    # Without the activation lower bound the guided case is NaN, and the bench says so.
    monkeypatch.setattr("pipeline.fp8.ACTIVATION_LOWER_BOUND", None)
    with pytest.raises(gpu.NonFiniteImage, match="128x128, batch 1, guidance 4 image has NaN"):
        gpu.main(args)
