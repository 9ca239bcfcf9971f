"""LoRAs per request on the tiny model (issue 24 section 1): the demo LoRA changes the
image, the key holds content hash and scale (never the name), the adapters' LRU,
batching by LoRA set, and the errors (unknown name, corrupt file)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cache import LayeredCache, MemoryTier
from pipeline.batching import batch_key
from pipeline.engine import Engine
from pipeline.errors import RequestInvalid
from pipeline.lora import LoraSpec, a1111_short_hash, parse_lora_arg, split_prompt_loras
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from pipeline.tiny_model import DEMO_LORA_NAME, ensure_demo_lora
from tests.engines import pixels, started

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A --lora-dir with a copy of the demo LoRA under another name, and a corrupt file."""
    folder = tmp_path_factory.mktemp("loras")
    shutil.copy(ensure_demo_lora(models_dir), folder / "renamed.safetensors")
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return folder


@pytest.fixture(scope="module")
def lora_engine(models_dir: Path, lora_dir: Path) -> Iterator[Engine]:
    eng = started(Engine("tiny", models_dir, lora_dir=lora_dir))
    yield eng
    eng.close()


@pytest.fixture
def service(lora_engine: Engine) -> GenerationService:
    return GenerationService(lora_engine, LayeredCache([MemoryTier(64 << 20)]))


def make(service: GenerationService, *loras: tuple[str, float], prompt: str = "a lantern", **kw: object):
    request = GenerationRequest(
        prompt=prompt, loras=[LoraSpec(name=n, scale=s) for n, s in loras], **(SMALL | kw)
    )
    return asyncio.run(service.generate(request))


def test_the_demo_lora_changes_the_image_and_is_keyed_by_content_and_scale(
    service: GenerationService, lora_engine: Engine
) -> None:
    plain = make(service)
    with_lora = make(service, (DEMO_LORA_NAME, 0.8))
    assert with_lora.cache == "miss" and with_lora.key != plain.key
    # Visibly: the mean pixel moves by several levels of 255.
    assert np.abs(pixels(with_lora.entry.data).astype(float) - pixels(plain.entry.data)).mean() > 5
    # The same LoRA and scale again: a hit. Another scale: a miss, another image.
    assert make(service, (DEMO_LORA_NAME, 0.8)).cache == "memory"
    other = make(service, (DEMO_LORA_NAME, 0.4))
    assert other.cache == "miss" and other.key != with_lora.key
    assert other.entry.data != with_lora.entry.data
    # By content, never by name: the same file under another name is the same key.
    renamed = make(service, ("renamed", 0.8))
    assert (renamed.cache, renamed.key) == ("memory", with_lora.key)
    # One content named twice is one LoRA at the sum of the scales: the same key.
    assert make(service, (DEMO_LORA_NAME, 0.5), ("renamed", 0.3)).key == with_lora.key
    # Scale 0 is no LoRA at all; and after LoRAs, a plain request is the base model exactly.
    assert make(service, (DEMO_LORA_NAME, 0.0)).key == plain.key
    again = asyncio.run(service.generate(GenerationRequest(prompt="a lantern", **SMALL), no_cache=True))
    assert again.entry.data == plain.entry.data
    # The adapter was loaded once (one content, two names), never the base model.
    assert lora_engine.adapters.loads == 1


def test_unknown_and_corrupt_loras_are_refused_naming_them_and_the_service_goes_on(
    service: GenerationService,
) -> None:
    with pytest.raises(RequestInvalid) as unknown:
        make(service, ("nope", 1.0))
    assert unknown.value.field == "loras" and "'nope'" in unknown.value.message
    assert DEMO_LORA_NAME in unknown.value.message  # and what is available
    with pytest.raises(RequestInvalid) as corrupt:
        make(service, ("broken", 1.0))
    assert corrupt.value.field == "loras" and "broken.safetensors" in corrupt.value.message
    assert make(service, (DEMO_LORA_NAME, 0.6), prompt="still up").cache == "miss"


def test_a_file_diffusers_cannot_load_is_refused_and_leaves_no_adapter(
    service: GenerationService, lora_engine: Engine, lora_dir: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    # A readable safetensors file whose LoRA does not fit the transformer's shapes.
    save_file(
        {
            "transformer.layers.0.attention.to_q.lora_A.weight": torch.ones(4, 7),
            "transformer.layers.0.attention.to_q.lora_B.weight": torch.ones(32, 4),
        },
        lora_dir / "misfit.safetensors",
    )
    before = list(lora_engine.adapters.loaded)
    with pytest.raises(RequestInvalid) as misfit:
        make(service, ("misfit", 1.0), prompt="misfit")
    assert misfit.value.field == "loras" and "'misfit'" in misfit.value.message
    assert lora_engine.adapters.loaded == before
    assert make(service, prompt="after misfit").cache == "miss"


def test_the_adapter_lru_is_bounded_by_count(models_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    demo = load_file(ensure_demo_lora(models_dir))
    for i in range(6):  # six LoRAs of different content
        save_file({k: v * (1 + i / 10) for k, v in demo.items()}, tmp_path / f"l{i}.safetensors")
    eng = started(Engine("tiny", models_dir, lora_dir=tmp_path, max_adapters=4))
    try:
        svc = GenerationService(eng, LayeredCache([MemoryTier(16 << 20)]))
        for i in range(6):
            make(svc, (f"l{i}", 1.0))
        assert len(eng.adapters.loaded) == 4
        assert sorted(eng._pipe.get_list_adapters()["transformer"]) == sorted(eng.adapters.loaded)
        make(svc, ("l0", 1.0), prompt="l0 again")  # evicted: loaded again
        assert eng.adapters.loads == 7
        make(svc, ("l5", 1.0), prompt="l5 again")  # still loaded
        assert eng.adapters.loads == 7
    finally:
        eng.close()


def test_batching_groups_only_requests_with_the_same_lora_set(service: GenerationService) -> None:
    base = GenerationRequest(prompt="a", **SMALL).canonical()
    demo = service.engine.loras.resolve([LoraSpec(name=DEMO_LORA_NAME, scale=0.8)], True)
    other = service.engine.loras.resolve([LoraSpec(name=DEMO_LORA_NAME, scale=0.5)], True)
    renamed = service.engine.loras.resolve([LoraSpec(name="renamed", scale=0.8)], True)
    assert batch_key(base) != batch_key(base, demo) != batch_key(base, other)
    assert batch_key(base, demo) == batch_key(base, renamed)


def test_a1111s_short_hash_is_of_the_tensors_not_the_header(tmp_path: Path) -> None:
    """A1111 (and Civitai) name a LoRA by sd-scripts' hash: metadata edits keep it."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    tensors = {"a.lora_A.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_file(tensors, str(one), metadata={"ss_output_name": "one"})
    save_file(tensors, str(two), metadata={"ss_output_name": "another name"})
    assert hashlib.sha256(one.read_bytes()).digest() != hashlib.sha256(two.read_bytes()).digest()
    assert a1111_short_hash(one) == a1111_short_hash(two)
    header = int.from_bytes(one.read_bytes()[:8], "little")
    assert a1111_short_hash(one) == hashlib.sha256(one.read_bytes()[8 + header :]).hexdigest()[:12]


def test_the_request_forms_of_a_lora() -> None:
    assert parse_lora_arg("style:0.8") == LoraSpec(name="style", scale=0.8)
    assert parse_lora_arg("style") == LoraSpec(name="style", scale=1.0)
    with pytest.raises(ValueError, match="must be a number"):
        parse_lora_arg("style:strong")
    # A1111: tags out of the prompt, as A1111 removes them; other extra networks dropped too.
    prompt, specs = split_prompt_loras("a cat <lora:style:0.7>, sharp <hypernet:x:1> <lora:ink>")
    assert prompt == "a cat , sharp  "
    assert specs == [LoraSpec(name="style", scale=0.7), LoraSpec(name="ink", scale=1.0)]
    with pytest.raises(ValueError, match="at most 4"):
        GenerationRequest(prompt="x", loras=[LoraSpec(name=f"l{i}") for i in range(5)])
    with pytest.raises(ValueError, match="named twice"):
        GenerationRequest(prompt="x", loras=[LoraSpec(name="a"), LoraSpec(name="a", scale=0.5)])
    with pytest.raises(ValueError, match="finite"):
        LoraSpec(name="a", scale=float("nan"))
