"""The `refine` mode of near-repeats (pipeline/refine.py): img2img from the nearest
stored image under the new prompt, with fewer denoising steps (counted as transformer
calls), labelled, keyed apart from a plain generation, a hit when repeated, and never
from another namespace's images."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cache import DiskTier, LayeredCache, MemoryTier
from pipeline.editing import steps_run
from pipeline.engine import Engine
from pipeline.errors import RequestInvalid
from pipeline.refine import REFINE_STRENGTH
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from pipeline.suggestions import Suggestions
from similarity import load_embedder
from similarity.near_repeats import NearRepeats

FOX, REWORDED = "a red fox standing in the snow", "a red fox in the snow, photo"
STEPS = 4


@pytest.fixture
def service(engine: Engine, tmp_path: Path) -> GenerationService:
    cache = LayeredCache([MemoryTier(8 << 20), DiskTier(tmp_path / "images")])
    return GenerationService(engine, cache, suggestions=Suggestions(NearRepeats(load_embedder(), None)))


@pytest.fixture
def forwards(engine: Engine) -> Iterator[list[int]]:
    """The transformer's calls: one per denoising step of an unguided image."""
    calls: list[int] = []
    handle = engine._pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


def ask(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=64, height=64, seed=11, steps=STEPS)


def counted(forwards: list[int], call: Any) -> tuple[Any, int]:
    """`call`'s result and the denoising steps it ran."""
    forwards.clear()
    result = asyncio.run(call)
    return result, len(forwards)


def test_refine_runs_fewer_steps_from_the_nearest_image_and_a_repeat_is_a_hit(
    service: GenerationService, forwards: list[int]
) -> None:
    source, steps = counted(forwards, service.generate(ask(FOX)))
    assert (source.cache, steps) == ("miss", STEPS)

    refine = {"similar_threshold": 0.8, "similar_mode": "refine"}
    refined, steps = counted(forwards, service.generate(ask(REWORDED), **refine))
    assert refined.cache == "refined" and steps == steps_run(STEPS, REFINE_STRENGTH) == STEPS // 2
    assert (refined.refined_from.key, refined.refined_from.prompt) == (source.key, FOX)
    assert 0.8 <= refined.refined_from.score < 1
    assert refined.request.prompt == REWORDED  # made under the new prompt
    assert (refined.entry.meta["edit"], refined.entry.meta["strength"]) == ("img2img", REFINE_STRENGTH)

    again, steps = counted(forwards, service.generate(ask(REWORDED), **refine))
    assert (again.cache, steps, again.key, again.entry.data) == ("memory", 0, refined.key, refined.entry.data)
    assert again.refined_from.key == source.key  # a hit, still named a refinement

    plain, steps = counted(forwards, service.generate(ask(REWORDED), no_cache=True))
    assert (plain.cache, steps) == ("bypass", STEPS)
    assert len({source.entry.data, refined.entry.data, plain.entry.data}) == 3
    assert refined.key not in (plain.key, source.key)  # keyed apart from a plain generation


def test_serve_stays_the_default_and_refine_needs_a_threshold(
    service: GenerationService, forwards: list[int]
) -> None:
    asyncio.run(service.generate(ask(FOX)))
    served, steps = counted(forwards, service.generate(ask(REWORDED), similar_threshold=0.8))
    assert (served.cache, steps, served.refined_from) == ("similar", 0, None)
    for bad in ({"similar_mode": "refine"}, {"similar_mode": "remix", "similar_threshold": 0.8}):
        with pytest.raises(RequestInvalid) as err:
            asyncio.run(service.generate(ask(REWORDED), **bad))
        assert err.value.field == "similar_mode"


def test_refine_never_starts_from_another_namespaces_image(
    service: GenerationService, forwards: list[int]
) -> None:
    asyncio.run(service.generate(ask(FOX), namespace="alice"))
    other, steps = counted(
        forwards,
        service.generate(ask(REWORDED), namespace="bob", similar_threshold=0.5, similar_mode="refine"),
    )
    assert (other.cache, steps, other.refined_from) == ("miss", STEPS, None)
