"""What a generation's key covers: what changes the pixels, in sections, and nothing else."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.text_encoder_numerics import encode
from pipeline.keys import derived_key, generation_key
from pipeline.loading import ModelIdentity
from pipeline.request import GenerationRequest
from pipeline.tiny_model import ensure_tiny_model

IDENTITY = ModelIdentity(
    model_id="Tongyi-MAI/Z-Image-Turbo",
    fingerprint="sha256:" + "ab" * 32,
    path=Path("/models/z"),
    device="cuda",
    dtype="bfloat16",
    demo=False,
    min_size=256,
)


def key(identity: ModelIdentity = IDENTITY, **fields: object) -> str:
    return generation_key(GenerationRequest(prompt="a red fox", **fields).canonical(), identity)


def test_the_format_is_not_part_of_the_key() -> None:
    assert key(format="png") == key(format="jpeg") == key(format="webp")
    # Each format made from it is stored under a key of its own.
    assert len({derived_key(key(), "jpeg"), derived_key(key(), "webp"), key()}) == 3


def test_inputs_join_as_a_section_of_their_own_and_only_when_present() -> None:
    request = GenerationRequest(prompt="a red fox").canonical()
    plain = generation_key(request, IDENTITY)
    assert generation_key(request, IDENTITY, {}) == plain  # no inputs: the key of today
    lora = {"loras": [{"sha256": "cd" * 32, "scale": 0.8}]}
    assert generation_key(request, IDENTITY, lora) != plain
    # A field named like an input elsewhere cannot collide with one: sections are apart.
    assert generation_key(request, IDENTITY, {"seed": 42}) != plain


def test_the_text_encoders_compute_dtype_is_in_the_key_and_its_device_is_not() -> None:
    fp32_encoder = replace(IDENTITY, text_encoder_dtype="float32")
    assert key(fp32_encoder) != key()
    assert key(replace(IDENTITY, text_encoder_dtype="bfloat16")) == key()  # said or implied, the same
    # Placement is not: the text encoder on the CPU or the GPU, in bfloat16 both.
    assert key(replace(IDENTITY, device="cpu")) == key()


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory: pytest.TempPathFactory):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(
        ensure_tiny_model(tmp_path_factory.mktemp("models")), torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_padding_the_prompt_changes_no_embedding_but_the_encoders_dtype_does(tiny_pipe) -> None:
    # Why padding (encoding only the real tokens) stays out of the key and the dtype is in.
    prompt = "a lighthouse at dusk, oil painting"
    padded, unpadded = encode(tiny_pipe, prompt, pad=True), encode(tiny_pipe, prompt, pad=False)
    assert padded.shape == unpadded.shape
    assert torch.allclose(padded, unpadded, rtol=0, atol=1e-6)
    tiny_pipe.text_encoder.to(torch.bfloat16)
    try:
        bf16 = encode(tiny_pipe, prompt, pad=True).float()
    finally:
        tiny_pipe.text_encoder.to(torch.float32)
    assert (bf16 - padded).norm() / padded.norm() > 1e-3
