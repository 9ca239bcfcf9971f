"""The memory record (pipeline/fit.py) counts what the memory plan counts: pixels x
images, doubled by guidance. Out-of-memory errors are injected into the tiny model's
transformer in-process, by the rows x pixels it is asked to run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.full_model import CONFIGS
from pipeline.engine import Engine
from pipeline.errors import ImageTooLarge, OutOfMemory
from pipeline.fit import Load
from pipeline.meta_memory import build_on_meta, transformer_peak
from pipeline.request import CanonicalRequest
from tests.engines import started

# The injected device fits at most this many transformer rows x pixels in one call.
CAPACITY = 40_000


@pytest.fixture
def small_gpu(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A tiny-model engine whose transformer runs out of memory past CAPACITY, as a GPU
    does: by the rows it runs (guidance doubles them) times the pixels of each."""
    from diffusers import ZImageTransformer2DModel

    forward = ZImageTransformer2DModel.forward

    def limited(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        pixels = x[0].shape[-1] * x[0].shape[-2] * 64  # latents are 1/8 of each side
        if len(x) * pixels > CAPACITY:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(ZImageTransformer2DModel, "forward", limited)
    engine = started(Engine("tiny", models_dir))  # warmed at 64x64, one image
    yield engine
    engine.close()


def make(engine: Engine, size: int, guidance: float, images: int = 1) -> int:
    requests = [
        CanonicalRequest("fit", "a longer negative prompt", s, size, size, 1, guidance) for s in range(images)
    ]
    return len(engine.submit(requests, embedding_scope=None).result(timeout=120))


def test_an_unguided_success_does_not_vouch_for_a_guided_image_of_the_same_size(small_gpu: Engine) -> None:
    assert make(small_gpu, 144, 0.0) == 1  # 20,736 rows x pixels: made
    # Guided, the same size runs twice the rows: not known to fit, so tried once more,
    # then refused for good (422), not a 503 that every retry spends on the GPU.
    with pytest.raises(ImageTooLarge, match="a 144x144 with guidance image does not fit") as refused:
        make(small_gpu, 144, 4.0)
    hint = "the largest made here is 144x144: ask for at most 10,368 pixels (width x height) with guidance"
    assert hint in refused.value.message
    with pytest.raises(ImageTooLarge):  # refused at once from then on, without a model call
        small_gpu.fits.check(Load(144, 144, 1, True))
    assert make(small_gpu, 144, 0.0) == 1  # the same size without guidance weighs half: made


def test_a_guided_refusal_does_not_refuse_the_same_size_unguided(small_gpu: Engine) -> None:
    with pytest.raises(ImageTooLarge, match="a 160x160 with guidance image"):
        make(small_gpu, 160, 4.0)  # 51,200
    small_gpu.fits.check(Load(160, 160, 1, False))  # half of it: still tried
    assert make(small_gpu, 160, 0.0) == 1  # 25,600: made
    # A guided image under the refused load and over the largest made is tried, and fits.
    assert make(small_gpu, 128, 4.0) == 1  # 32,768
    # A batch the device cannot take at once is split; each half is within what was made.
    assert make(small_gpu, 128, 4.0, images=2) == 2
    # Known to fit (as if made before), yet out of memory: memory is held elsewhere, a 503.
    small_gpu.fits.largest_made = Load(512, 512, 1, True)
    with pytest.raises(OutOfMemory, match="retry shortly"):
        make(small_gpu, 208, 0.0)  # 43,264: under the refused load, over the capacity


def test_the_records_measure_orders_loads_as_the_meta_device_estimate_does() -> None:
    """The plan's activation estimate of the full-size transformer (meta device, no memory)
    grows with pixels x transformer rows, and loads of equal units weigh the same."""
    transformer = build_on_meta(CONFIGS, "transformer", torch.bfloat16)
    loads = [
        Load(1024, 1024, 1, False),
        Load(1024, 1024, 1, True),
        Load(2048, 2048, 1, False),
        Load(1024, 1024, 2, True),
        Load(2048, 2048, 1, True),
    ]
    peaks = {
        load: transformer_peak(
            transformer, load.width, batch=load.images * (2 if load.guided else 1), caption_tokens=128
        )
        for load in loads
    }
    per_unit = [peaks[load] / load.units for load in loads]
    assert max(per_unit) < 1.1 * min(per_unit)  # linear in units, within 10%
    assert sorted(loads, key=lambda load: load.units) == sorted(loads, key=lambda load: peaks[load])
    # A guided image weighs what two unguided ones do, and the same size unguided half.
    guided, twice = peaks[Load(2048, 2048, 1, True)], peaks[Load(2048, 2048, 1, False)]
    assert 1.9 < guided / twice < 2.1
