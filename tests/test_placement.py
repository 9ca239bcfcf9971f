"""Placement by memory budget, without a GPU: the full-size model's bytes from the meta
device, torch.cuda.mem_get_info mocked as 8/12/16/24/80 GB cards, and spies on the
diffusers/accelerate calls that load and place the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.full_model import CONFIGS
from pipeline.loading import load_pipeline, resolve_model
from pipeline.meta_memory import MemoryNeeds, memory_needs
from pipeline.placement import (
    MARGIN,
    DoesNotFit,
    GiB,
    Placement,
    load_placed,
    mode_needs,
    plan_placement,
    text_encoder_device,
)

# (total GiB as mem_get_info reports it, the card); free = total - 0.5 GiB for the
# CUDA context and a display, as on a desktop card.
CARDS = {8: 8.0, 12: 12.0, 16: 15.99, 24: 23.99, 80: 79.65}


@pytest.fixture(scope="module")
def full_size() -> dict[str, MemoryNeeds]:
    return {q: memory_needs(CONFIGS, torch.bfloat16, q) for q in ("none", "fp8")}


def card(monkeypatch: pytest.MonkeyPatch, gb: int) -> None:
    total = int(CARDS[gb] * GiB)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total - GiB // 2, total))


def test_the_full_size_model_needs_19_gib_of_weights_measured_on_meta(full_size: dict) -> None:
    needs = full_size["none"]
    weights = {name: round(b / GiB, 2) for name, b in needs.weights.items()}
    assert weights == {"transformer": 11.46, "text_encoder": 7.49, "vae": 0.16}
    # fp8 stores the transformer's linear weights in one byte: about half.
    assert 5.6 * GiB < full_size["fp8"].weights["transformer"] < 5.9 * GiB
    assert full_size["fp8"].weights["text_encoder"] == needs.weights["text_encoder"]
    # Activations of one 1024² image with guidance, and of its decode (fused attention).
    assert 0.9 * GiB < needs.transformer_work < 1.2 * GiB
    assert 1.4 * GiB < needs.decode_work < 1.6 * GiB
    assert needs.largest_module < GiB  # the text encoder's token embedding, 0.72 GiB


@pytest.mark.parametrize(
    ("gb", "quantize", "mode"),
    [
        (80, "none", "none"),
        (24, "none", "none"),
        (16, "none", "stream-text-encoder"),  # a 16 GB card: the transformer resident, the encoder streamed
        (12, "none", "model"),  # streamed by group offloading, no longer sequential
        (8, "none", "model"),
        (16, "fp8", "stream-text-encoder"),
        (12, "fp8", "stream-text-encoder"),
        (8, "fp8", "model"),
    ],
)
def test_auto_placement_by_card(
    monkeypatch: pytest.MonkeyPatch, full_size: dict, gb: int, quantize: str, mode: str
) -> None:
    card(monkeypatch, gb)
    plan = plan_placement("auto", "cuda", full_size[quantize])
    assert plan.mode == mode, plan.describe()
    assert plan.needs[mode] <= plan.free_bytes
    print(f"{gb} GB, --quantize {quantize}: {plan.describe()}")


def test_what_each_mode_needs_for_the_full_size_model(full_size: dict) -> None:
    needs = {mode: round(b / GiB, 1) for mode, b in mode_needs(full_size["none"]).items()}
    assert needs == {
        "none": 21.6,
        "stream-text-encoder": 15.2,
        "text-encoder": 14.1,
        "model": 3.6,
        "sequential": 3.2,
    }
    # model mode streams each component: its non-block part and two blocks on the GPU.
    streamed = {name: round(b / GiB, 2) for name, b in full_size["none"].streamed.items()}
    assert streamed == {"transformer": 0.68, "text_encoder": 1.1, "vae": 0.16}
    assert GiB == MARGIN


def test_a_card_too_small_for_anything_is_refused_naming_the_need(
    monkeypatch: pytest.MonkeyPatch, full_size: dict
) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * GiB, 4 * GiB))
    with pytest.raises(
        DoesNotFit, match=r"2.0 GiB free of 4.0 GiB; even --offload sequential needs about 3.2"
    ):
        plan_placement("auto", "cuda", full_size["none"])


def test_an_explicit_mode_is_obeyed_with_a_warning_when_it_will_not_fit(
    monkeypatch: pytest.MonkeyPatch, full_size: dict, caplog: pytest.LogCaptureFixture
) -> None:
    card(monkeypatch, 16)
    plan = plan_placement("none", "cuda", full_size["none"])
    assert plan.mode == "none" and plan.reason == "chosen by --offload"
    assert "expect out-of-memory errors" in caplog.text
    assert plan_placement("model", "cuda", full_size["none"]).mode == "model"


def test_the_cpu_keeps_everything_in_ram_whatever_the_setting() -> None:
    plan = plan_placement("sequential", "cpu", None)
    assert plan.mode == "none" and plan.component_devices() == dict.fromkeys(
        ("transformer", "text_encoder", "vae"), "cpu"
    )
    assert not plan.vae_slicing and not plan.vae_tiling


class Spy:
    """Records the calls it wraps; can drop CUDA-only arguments before calling the real thing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *, run: bool = True) -> None:
        self.calls: list[dict[str, Any]] = []
        original = getattr(owner, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(dict(kwargs))
            if run:
                kwargs.pop("device_map", None)  # no GPU here: load to the CPU instead
                return original(*args, **kwargs)
            return None

        monkeypatch.setattr(owner, name, spy)


def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, Spy]:
    import diffusers.hooks
    from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    return {
        "transformer": Spy(monkeypatch, ZImageTransformer2DModel, "from_pretrained"),
        "text_encoder": Spy(monkeypatch, Qwen3Model, "from_pretrained"),
        "vae": Spy(monkeypatch, AutoencoderKL, "from_pretrained"),
        "model_offload": Spy(monkeypatch, ZImagePipeline, "enable_model_cpu_offload", run=False),
        "sequential_offload": Spy(monkeypatch, ZImagePipeline, "enable_sequential_cpu_offload", run=False),
        "group_offload": Spy(monkeypatch, ZImagePipeline, "enable_group_offload", run=False),
        "stream_one": Spy(monkeypatch, diffusers.hooks, "apply_group_offloading", run=False),
    }


@pytest.mark.parametrize(
    ("mode", "device_maps", "offload"),
    [
        ("none", {"transformer": "cuda", "text_encoder": "cuda", "vae": "cuda"}, None),
        ("stream-text-encoder", {"transformer": "cuda", "text_encoder": None, "vae": "cuda"}, "stream_one"),
        ("text-encoder", {"transformer": "cuda", "text_encoder": None, "vae": "cuda"}, None),
        ("model", {"transformer": None, "text_encoder": None, "vae": None}, "group_offload"),
        ("sequential", {"transformer": None, "text_encoder": None, "vae": None}, "sequential_offload"),
    ],
)
def test_loading_puts_each_component_straight_on_its_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str, device_maps: dict, offload: str | None
) -> None:
    model_dir = resolve_model("tiny", tmp_path / "models").path
    calls = spies(monkeypatch)
    pipe = load_placed(model_dir, torch.float32, Placement(mode, "cuda", "test"))
    for name, device_map in device_maps.items():
        (kwargs,) = calls[name].calls
        assert kwargs.get("device_map") == device_map, name  # None: from_pretrained's CPU default
        assert kwargs["dtype"] == torch.float32
    # Block by block from pinned memory, the next block copied on a CUDA stream.
    streamed = {
        "onload_device": torch.device("cuda"),
        "offload_type": "block_level",
        "num_blocks_per_group": 1,
        "use_stream": True,
    }
    expected = {
        "sequential_offload": {"device": "cuda"},
        "group_offload": streamed,
        "stream_one": streamed | {"module": pipe.text_encoder},  # the text encoder alone
    }
    for hook in ("model_offload", "sequential_offload", "group_offload", "stream_one"):
        assert calls[hook].calls == ([expected[hook]] if hook == offload else [])
    # Batches decode an image at a time; sides over the VAE's tile are decoded in tiles.
    assert pipe.vae.use_slicing and pipe.vae.use_tiling


def test_the_cpu_path_loads_without_device_maps_or_vae_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = spies(monkeypatch)
    pipe, plan = load_pipeline(resolve_model("tiny", tmp_path / "models"))
    assert plan.mode == "none" and plan.device == "cpu"
    assert all("device_map" not in calls[name].calls[0] for name in ("transformer", "text_encoder", "vae"))
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling  # CPU images stay as they were


def test_the_text_encoder_runs_where_it_lives_and_its_output_goes_to_the_transformer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from accelerate import cpu_offload_with_hook

    from pipeline.engine import Engine
    from pipeline.rendering import Render

    engine = Engine("tiny", tmp_path / "models", embedding_cache_bytes=0)
    engine.start()
    assert engine.identity_future.result(timeout=120)
    engine.close(120)
    pipe, identity = engine._pipe, engine.identity
    assert text_encoder_device(pipe) == torch.device("cpu")  # text-encoder mode: weights on the CPU

    seen: list[Any] = []
    encode = pipe.encode_prompt
    monkeypatch.setattr(pipe, "encode_prompt", lambda **kw: seen.append(kw["device"]) or encode(**kw))
    # The transformer's device stands in for CUDA: meta takes any tensor without a GPU.
    render = Render(pipe, identity, embeddings=engine.embeddings, fits=engine.fits)
    embeds = render.embed("a lighthouse", torch.device("meta"), None)
    assert seen == [torch.device("cpu")] and {t.device.type for t in embeds} == {"meta"}

    # Under accelerate's offload hooks the encoder runs on the hooks' execution device.
    cpu_offload_with_hook(pipe.text_encoder, execution_device="cuda")
    assert text_encoder_device(pipe) == torch.device("cuda")


def test_a_16_gb_card_loads_the_transformer_on_the_gpu_and_streams_the_text_encoder_from_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_size: dict
) -> None:
    # The whole start-up path on a mocked 16 GB card: the full-size model's needs
    # (computed on meta) decide; the tiny model's files stand in for its weights.
    import dataclasses

    from pipeline import meta_memory

    identity = dataclasses.replace(
        resolve_model("tiny", tmp_path / "models"), device="cuda", dtype="bfloat16"
    )
    card(monkeypatch, 16)
    monkeypatch.setattr(meta_memory, "memory_needs", lambda path, dtype, quantize: full_size[quantize])
    calls = spies(monkeypatch)
    pipe, plan = load_pipeline(identity)
    assert plan.mode == "stream-text-encoder" and plan.device == "cuda"
    assert plan.needs["stream-text-encoder"] <= plan.free_bytes < plan.needs["none"]
    assert [calls[name].calls[0].get("device_map") for name in ("transformer", "text_encoder", "vae")] == [
        "cuda",
        None,
        "cuda",
    ]
    assert calls["model_offload"].calls == [] and calls["sequential_offload"].calls == []
    assert calls["group_offload"].calls == []  # the pipeline's parts are not all streamed
    [streamed] = calls["stream_one"].calls  # only the text encoder, from pinned CPU memory
    assert streamed["module"] is pipe.text_encoder and streamed["use_stream"] is True
    assert pipe.vae.use_slicing and pipe.vae.use_tiling


def test_the_meta_peak_counts_tensors_alive_at_once_and_attention_as_a_fused_kernel() -> None:
    from pipeline.meta_memory import peak_bytes

    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        x = torch.empty(8, 64)
    with peak_bytes(net, x) as peak:
        net(x)
    # The GELU's output and its input (8x256 float32 each) live together; the last
    # linear's output is smaller; the weights and the input are not counted.
    assert peak.value == 2 * 8 * 256 * 4

    q = torch.empty(1, 30, 4096, 128, device="meta", dtype=torch.bfloat16)
    with peak_bytes(torch.nn.Identity(), q) as peak:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert peak.value == q.numel() * 2  # the output, not a 4096x4096 score matrix per head


def full_size_on_a_card(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_size: dict, free: list[int]
) -> Any:
    """The tiny model's files with the full-size model's needs, on a card whose free
    memory is `free[0]` (a test changes it to mimic another process taking memory)."""
    import dataclasses

    from pipeline import meta_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free[0], 24 * GiB))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(meta_memory, "memory_needs", lambda path, dtype, quantize: full_size[quantize])
    return dataclasses.replace(resolve_model("tiny", tmp_path / "models"), device="cuda", dtype="bfloat16")


def oom_on_the_gpu(monkeypatch: pytest.MonkeyPatch, free: list[int], now_free: int) -> list[Any]:
    """The text encoder's load to the GPU runs out of memory, which leaves `now_free`."""
    from transformers import Qwen3Model

    seen: list[Any] = []
    original = Qwen3Model.from_pretrained

    def load(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("device_map"))
        if kwargs.pop("device_map", None) == "cuda":
            free[0] = now_free
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 594.00 MiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(Qwen3Model, "from_pretrained", load)
    return seen


def test_out_of_memory_while_loading_steps_down_to_the_next_mode_that_fits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_size: dict, caplog: pytest.LogCaptureFixture
) -> None:
    # A 24 GB card plans `none`; while loading, another process takes 8 GiB: the text
    # encoder's load to the GPU fails, and the load goes on with the text encoder on the CPU.
    free = [int(23.5 * GiB)]
    identity = full_size_on_a_card(monkeypatch, tmp_path, full_size, free)
    calls = spies(monkeypatch)
    seen = oom_on_the_gpu(monkeypatch, free, int(15.5 * GiB))
    pipe, plan = load_pipeline(identity)
    assert seen == ["cuda", None]  # the second try loads it to the CPU
    assert plan.mode == "stream-text-encoder" and plan.free_bytes == int(15.5 * GiB)
    assert plan.reason == "auto: stepped down from none, out of memory while loading"
    work = full_size["none"].work
    assert plan.activation_budget == int(15.5 * GiB) - (plan.needs["stream-text-encoder"] - work)
    assert [c.get("device_map") for c in calls["transformer"].calls] == ["cuda", "cuda"]
    assert text_encoder_device(pipe) == torch.device("cpu")
    assert (
        "out of memory while loading with --offload none (CUDA out of memory. Tried to allocate 594.00 MiB); "
        "15.5 GiB free now: stepping down to stream-text-encoder" in caplog.text
    )


def test_out_of_memory_while_loading_with_nothing_left_or_an_explicit_mode_names_the_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_size: dict
) -> None:
    from pipeline.loading import ModelOptions

    free = [int(23.5 * GiB)]
    identity = full_size_on_a_card(monkeypatch, tmp_path, full_size, free)
    spies(monkeypatch)
    oom_on_the_gpu(monkeypatch, free, 2 * GiB)
    with pytest.raises(
        DoesNotFit,
        match=r"2.0 GiB free now of 24.0 GiB, and no later mode fits \(stream-text-encoder needs 15.2",
    ):
        load_pipeline(identity)
    free[0] = int(23.5 * GiB)
    with pytest.raises(DoesNotFit, match=r"--offload none \(CUDA out of memory.*use --offload auto to step"):
        load_pipeline(identity, ModelOptions(offload="none"))


def test_streamed_modes_make_the_same_image_and_copy_nothing_back_after_a_generation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The model mode's hooks on the CPU (no CUDA stream there): the image is the plain
    # pipeline's, the text encoder runs where the hooks put it, and the call ends
    # without diffusers' `pipe.to("cpu")`, which under accelerate's model offload
    # copied every weight back over pageable memory after every request.
    from diffusers import ZImagePipeline

    from pipeline.embeddings import EmbeddingCache
    from pipeline.fit import FitRecord
    from pipeline.rendering import Render
    from pipeline.request import CanonicalRequest

    identity = resolve_model("tiny", tmp_path / "models")
    request = CanonicalRequest("a lighthouse", "", 7, 64, 64, 2, 0.0)

    def render(plan: Placement) -> tuple[Any, Any, list[Any]]:
        pipe = load_placed(identity.path, torch.float32, plan)
        moves: list[Any] = []
        monkeypatch.setattr(pipe, "to", lambda *args, **kw: moves.append(args) or pipe)
        rendered = Render(pipe, identity, embeddings=EmbeddingCache(0), fits=FitRecord())([request])
        return pipe, rendered.pixels, moves

    plain_pipe, plain, _ = render(Placement("none", "cpu", "test"))
    group = Spy(monkeypatch, ZImagePipeline, "enable_group_offload")
    pipe, streamed, moves = render(Placement("model", "cpu", "test"))
    assert group.calls == [
        {"onload_device": torch.device("cpu"), "offload_type": "block_level", "num_blocks_per_group": 1}
        | {"use_stream": False}
    ]
    assert hasattr(pipe.transformer.layers[0], "_diffusers_hook")  # the blocks carry the hooks
    assert text_encoder_device(pipe) == torch.device("cpu")  # the hooks' onload device
    assert moves == []
    assert np.array_equal(np.asarray(streamed), np.asarray(plain))
    # stream-text-encoder: the same hooks on the text encoder alone; the same image.
    pipe, streamed, moves = render(Placement("stream-text-encoder", "cpu", "test"))
    assert hasattr(pipe.text_encoder.layers[0], "_diffusers_hook")
    assert not hasattr(pipe.transformer.layers[0], "_diffusers_hook")
    assert moves == [] and np.array_equal(np.asarray(streamed), np.asarray(plain))
    # Under group offloading the encoder runs on the hooks' onload device, not where its
    # weights rest (the CPU): its inputs are put there.
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        plain_pipe.text_encoder, onload_device="cuda", offload_type="block_level", num_blocks_per_group=1
    )
    assert plain_pipe.text_encoder.device == torch.device("cpu")
    assert text_encoder_device(plain_pipe) == torch.device("cuda")


def test_the_cpu_flags_say_whether_it_computes_in_bfloat16(tmp_path: Path) -> None:
    from pipeline.loading import cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_has_native_bf16(info) is False  # an AVX2 CPU, like this one: bfloat16 emulated
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(info) is True
    info.write_text("Features\t: fp asimd bf16 i8mm\n")  # ARM (Graviton 3, Grace)
    assert cpu_has_native_bf16(info) is True
    assert cpu_has_native_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize(
    ("free_gib", "cpu_bf16", "encoder"),
    [
        (14.5, False, "float32"),  # text-encoder mode on an AVX2 CPU: float32, cast after
        (14.5, True, None),  # a CPU with native bfloat16 encodes in it
        (15.5, False, None),  # stream-text-encoder: the encoder runs on the GPU
    ],
)
def test_the_text_encoder_computes_in_float32_on_a_cpu_without_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    full_size: dict,
    free_gib: float,
    cpu_bf16: bool,
    encoder: str | None,
) -> None:
    from pipeline import loading, meta_memory
    from pipeline.embeddings import EmbeddingCache
    from pipeline.fit import FitRecord
    from pipeline.rendering import Render

    monkeypatch.setattr(loading, "pick_device", lambda: ("cuda", "bfloat16"))
    monkeypatch.setattr(loading, "check_bf16_gpu", lambda: None)
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(meta_memory, "memory_needs", lambda path, dtype, quantize: full_size[quantize])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GiB), 16 * GiB))
    identity = resolve_model("tiny", tmp_path / "models")
    assert identity.text_encoder_dtype == encoder
    assert identity.key_fields()["text_encoder"] == (encoder or "bfloat16")  # in the key
    if encoder is None:
        return
    calls = spies(monkeypatch)
    pipe, plan = load_pipeline(identity)
    assert plan.mode == "text-encoder"
    assert calls["text_encoder"].calls[0]["dtype"] == torch.float32
    assert calls["transformer"].calls[0]["dtype"] == torch.bfloat16
    # The float32 encoder's output reaches the transformer in its dtype.
    render = Render(pipe, identity, embeddings=EmbeddingCache(1 << 20), fits=FitRecord())
    [embeds] = render.embed("a red fox", torch.device("cpu"), "scope")
    assert embeds.dtype == torch.bfloat16 and torch.isfinite(embeds.float()).all()
