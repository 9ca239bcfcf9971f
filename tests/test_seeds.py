"""A seed's noise is drawn on the CPU whatever the device, so replicas with different
GPUs make the same image for a key; and the key records where the noise comes from."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from cache import make_key
from pipeline.engine import Engine
from pipeline.request import CanonicalRequest
from pipeline.service import GenerationService


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    eng = Engine("tiny", tmp_path_factory.mktemp("models"))
    eng.start()
    eng.identity_future.result(timeout=120)
    eng.close(120)  # loaded and warmed; the tests call its parts directly
    return eng


class RecordingPipe:
    """The real pipeline's text encoder, and a denoising call that only records its arguments."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.calls = pipe, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        # The engine asks for latents and decodes them itself (with the real VAE).
        assert kwargs["output_type"] == "latent"
        latents = torch.zeros(len(kwargs["generator"]), self.pipe.vae.config.latent_channels, 8, 8)
        return type("Output", (), {"images": latents})


def test_noise_is_drawn_on_the_cpu_whatever_the_device(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The identity says another device (meta stands in for CUDA: it takes any tensor).
    on_gpu = dataclasses.replace(engine.identity, device="meta")
    recorder = RecordingPipe(engine._pipe)
    monkeypatch.setattr(engine, "_pipe", recorder)
    requests = [CanonicalRequest("a red fox", "", seed, 64, 64, 2, 0.0) for seed in (5, 6, 7)]
    engine._run(requests, on_gpu)
    (call,) = recorder.calls
    assert [g.device.type for g in call["generator"]] == ["cpu"] * 3
    assert [g.initial_seed() for g in call["generator"]] == [5, 6, 7]
    assert {t.device.type for t in call["prompt_embeds"]} == {"meta"}  # embeddings go to the device


def test_the_pipeline_draws_cpu_noise_for_another_device_and_moves_it(engine: Engine) -> None:
    # ZImagePipeline.prepare_latents -> diffusers' randn_tensor: with CPU generators the
    # noise is drawn on the CPU, then moved; the values are the CPU's for the seed.
    pipe = engine._pipe
    args = (1, 16, 128, 128, torch.float32)
    on_device = pipe.prepare_latents(*args, torch.device("meta"), [torch.Generator("cpu").manual_seed(3)])
    on_cpu = pipe.prepare_latents(*args, torch.device("cpu"), [torch.Generator("cpu").manual_seed(3)])
    assert on_device.device.type == "meta" and on_device.shape == on_cpu.shape
    assert torch.equal(on_cpu, torch.randn(on_cpu.shape, generator=torch.Generator("cpu").manual_seed(3)))


def test_the_key_records_the_noise_source(engine: Engine) -> None:
    identity = engine.identity
    request = CanonicalRequest("a red fox", "", 42, 1024, 1024, 8, 0.0)
    assert identity.key_fields() == {
        "model": identity.fingerprint,
        "dtype": identity.dtype,
        "quantize": "none",
        "noise": "cpu",
        "text_encoder": identity.dtype,
    }
    # Images made before with CUDA generators (keyed without it) are never returned.
    before = make_key({"request": request.as_dict(), "model": identity.fingerprint, "dtype": identity.dtype})
    assert GenerationService.key_for(request, identity) != before
