"""The engine's run path in-process with the tiny model: encoding off the engine thread,
and the attention backend (choice, fallback, masks) with a mocked torch.cuda."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.encoding
from pipeline import attention
from pipeline.engine import Engine, EngineState
from pipeline.request import CanonicalRequest
from tests.engines import LONG_NEGATIVE, pixels, started


def request(prompt: str, seed: int = 0, **kw: object) -> CanonicalRequest:
    fields = {"negative_prompt": "", "width": 64, "height": 64, "steps": 2, "guidance_scale": 0.0} | kw
    return CanonicalRequest(prompt=prompt, seed=seed, **fields)  # type: ignore[arg-type]


# -- encoding off the engine thread ---------------------------------------------------------


def test_the_next_denoising_starts_while_the_last_image_is_encoded(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    second_denoising = threading.Event()
    encode = pipeline.encoding.encode_image

    def slow_encode(image, req, identity, loras=()):  # type: ignore[no-untyped-def]
        events.append(f"encode {req.prompt} starts on {threading.current_thread().name}")
        if req.prompt == "first":
            # Holds job 1's encoding until job 2 denoises; on the engine thread that
            # would never happen, and the wait runs out.
            second_denoising.wait(timeout=20)
        events.append(f"encode {req.prompt} ends")
        return encode(image, req, identity, loras)

    def denoising(name: str):  # type: ignore[no-untyped-def]
        def progress(step: int, steps: int) -> None:
            if step == 1:
                events.append(f"denoise {name}")
                if name == "second":
                    second_denoising.set()

        return progress

    monkeypatch.setattr(pipeline.encoding, "encode_image", slow_encode)
    monkeypatch.setattr(engine, "max_batch", 1)  # two jobs, not one batched call (tests/test_batching.py)
    first = engine.submit([request("first")], denoising("first"))
    second = engine.submit([request("second")], denoising("second"))
    assert first.result(timeout=60)[0].data[:8] == b"\x89PNG\r\n\x1a\n"
    assert second.result(timeout=60)[0].data[:8] == b"\x89PNG\r\n\x1a\n"

    order = [e.split(" on ")[0] for e in events]
    assert (
        order.index("encode first starts") < order.index("denoise second") < order.index("encode first ends")
    )
    assert all("zimage-encode" in e for e in events if " starts on " in e)


def test_nan_and_black_checks_run_on_the_encoding_threads_and_fail_the_future(engine: Engine) -> None:
    from pipeline.errors import GenerationFailed

    vae = engine._pipe.vae
    original = vae.decoder.conv_out.bias.detach().clone()
    try:
        vae.decoder.conv_out.bias.data.fill_(float("nan"))
        future = engine.submit([request("poisoned")])
        with pytest.raises(GenerationFailed, match="NaN"):
            future.result(timeout=60)
    finally:
        vae.decoder.conv_out.bias.data.copy_(original)
    assert engine.submit([request("healthy again")]).result(timeout=60)[0].ext == "png"


# -- attention backends ---------------------------------------------------------------------


def test_a_flash_kernel_alone_cannot_serve_guidance_with_a_mask(engine: Engine) -> None:
    """Today's failure mode, with diffusers alone: _native_flash (which runs on the CPU
    too) refuses the mask that guidance > 0 with prompts of different lengths needs."""
    pipe = engine._pipe
    embeds = lambda text: pipe.encode_prompt(  # noqa: E731
        prompt=text, device=torch.device("cpu"), do_classifier_free_guidance=False
    )[0]
    positive, negative = embeds("a lantern"), embeds(LONG_NEGATIVE)
    assert positive[0].shape[0] // 32 != negative[0].shape[0] // 32  # different padded lengths
    pipe.transformer.set_attention_backend("_native_flash")
    try:
        with pytest.raises(ValueError, match="`attn_mask` is not supported for native flash attention"):
            pipe(
                prompt_embeds=positive,
                negative_prompt_embeds=negative,
                height=64,
                width=64,
                num_inference_steps=1,
                guidance_scale=2.0,
                output_type="latent",
            )
    finally:
        pipe.transformer.set_attention_backend("native")


def test_with_a_flash_kernel_masked_calls_go_to_native_and_the_rest_to_flash(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers.models.transformers import transformer_z_image

    calls: list[tuple[str, bool]] = []
    dispatch = transformer_z_image.dispatch_attention_fn

    def spy(query, key, value, attn_mask=None, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((str(kwargs["backend"].value), attn_mask is not None))
        return dispatch(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(transformer_z_image, "dispatch_attention_fn", spy)
    flash = started(Engine("tiny", models_dir, attention_backend="_native_flash"))
    native = started(Engine("tiny", models_dir, attention_backend="native"))
    try:
        assert flash.attention_in_use == "_native_flash"
        guided = request("a lantern", seed=5, negative_prompt=LONG_NEGATIVE, guidance_scale=2.0)
        calls.clear()
        made = flash.submit(
            [guided, request("a lantern", seed=6, negative_prompt=LONG_NEGATIVE, guidance_scale=2.0)]
        )
        images = made.result(timeout=60)
        assert ("native", True) in calls and ("_native_flash", False) in calls
        assert set(calls) == {("native", True), ("_native_flash", False)}
        reference = native.submit([guided]).result(timeout=60)[0]
        # The same image as native attention everywhere, up to kernel rounding.
        diff = np.abs(pixels(images[0].data).astype(int) - pixels(reference.data).astype(int))
        assert diff.max() <= 2
    finally:
        flash.close()
        native.close()


def test_an_explicit_backend_that_cannot_run_fails_the_model_with_the_fix(models_dir: Path) -> None:
    engine = Engine("tiny", models_dir, attention_backend="flash")  # flash-attn is not installed here
    engine.start()
    engine.wait_settled(60)
    engine.close()
    assert engine.state == EngineState.FAILED
    assert "--attention-backend flash cannot run here" in (engine.error or "")
    assert "flash-attn" in (engine.error or "") and "auto" in (engine.error or "")


def test_attention_backend_names_are_checked_against_diffusers_registry() -> None:
    assert attention.check_backend_name("_flash_3") == "_flash_3"
    with pytest.raises(
        ValueError, match=r"'flash4' is not an attention backend; choose one of: auto, .*native"
    ):
        attention.check_backend_name("flash4")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_encoding_only_the_real_tokens_equals_encoding_them_padded_to_512(
    engine: Engine, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With right padding and causal attention the pad tokens change nothing for the
    real ones: the engine encodes only those (count_tokens), with the same result up to
    rounding."""
    import torch

    from pipeline.embeddings import EmbeddingCache
    from pipeline.fit import FitRecord
    from pipeline.rendering import Render, count_tokens

    pipe, identity = engine._pipe, engine.identity
    pipe.text_encoder.to(getattr(torch, dtype))
    lengths: list[int] = []
    encode = pipe.encode_prompt
    monkeypatch.setattr(
        pipe, "encode_prompt", lambda **kw: lengths.append(kw["max_sequence_length"]) or encode(**kw)
    )
    try:
        render = Render(pipe, identity, embeddings=EmbeddingCache(0), fits=FitRecord())
        for text in ("a red fox", "", "a lighthouse on a cliff at dusk, waves, spray, gulls, fog, " * 3):
            [real] = render.embed(text, torch.device("cpu"), None)
            with torch.no_grad():
                [padded] = encode(
                    prompt=text, device="cpu", do_classifier_free_guidance=False, max_sequence_length=512
                )[0]
            assert lengths[-1] == count_tokens(pipe.tokenizer, text) == len(real) < 512
            # Equal up to the rounding of products of another shape (about one unit in the
            # last place: 4e-9 in float32; bfloat16 loaded as such measured bit-equal).
            tolerance = {"bfloat16": 1e-2, "float32": 1e-6}[dtype]
            assert torch.allclose(real.float(), padded.float(), rtol=tolerance, atol=tolerance * 1e-1)
    finally:
        pipe.text_encoder.to(torch.float32)
