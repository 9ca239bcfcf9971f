"""Batching across requests (pipeline/batching.py, the engine's gathering): concurrent
jobs with different prompts and the same size, steps and guidance share one model call,
and each image is the one made alone, byte for byte (pipeline/batch_invariance.py:
the products whose rounding changed with the number of rows run per image)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.engine import Engine
from pipeline.errors import JobInterrupted
from pipeline.placement import Placement
from pipeline.request import CanonicalRequest
from tests.engines import started

LONG_PROMPT = "a lighthouse on a cliff at dusk, waves, spray, gulls, fog, " * 3  # over 64 tokens


@pytest.fixture
def batching(models_dir: Path) -> Iterator[tuple[Engine, list[int]]]:
    """A started engine and the images of each of its model calls after warm-up."""
    engine = started(Engine("tiny", models_dir, max_batch=8))  # on the CPU the default is 1
    calls: list[int] = []
    engine.batch_observers.append(calls.append)
    yield engine, calls
    engine.close()


def ask(prompt: str, size: int = 128, guidance: float = 0.0, seed: int = 3) -> CanonicalRequest:
    return CanonicalRequest(prompt, "", seed, size, size, 2, guidance)


def blocker(engine: Engine) -> tuple[threading.Event, object]:
    """A job that keeps the engine busy in its first step until the event is set."""
    release, running = threading.Event(), threading.Event()

    def hold(step: int, steps: int) -> None:
        running.set()
        release.wait(60)

    job = engine.submit([ask("hold the engine", size=64)], hold, embedding_scope=None)
    assert running.wait(60)
    return release, job


def same_image(a: bytes, b: bytes) -> bool:
    """Whether two encoded images are the same, byte for byte (pipeline/batch_invariance.py)."""
    return a == b


def alone(engine: Engine, request: CanonicalRequest) -> bytes:
    """The image of `request` made in a model call of its own."""
    before = engine.max_batch
    engine.max_batch = 1
    try:
        return engine.submit([request], embedding_scope=None).result(timeout=120)[0].data
    finally:
        engine.max_batch = before


@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_waiting_jobs_with_different_prompts_share_one_model_call_and_equal_their_images_alone(
    batching: tuple[Engine, list[int]], guidance: float
) -> None:
    engine, calls = batching
    release, held = blocker(engine)
    prompts = ["a red fox in the snow", "a green lake at dawn", "a tin robot on a bike"]  # 39-40 tokens
    jobs = [engine.submit([ask(p, guidance=guidance)], embedding_scope="public") for p in prompts]
    other_size = engine.submit(
        [ask("a red fox in the snow", size=96, guidance=guidance)], embedding_scope="public"
    )
    longer = engine.submit([ask(LONG_PROMPT, guidance=guidance)], embedding_scope="public")  # padded longer
    calls.clear()
    release.set()
    images = [job.result(timeout=120)[0].data for job in jobs]
    other_size.result(timeout=120), longer.result(timeout=120), held.result(timeout=120)  # type: ignore[attr-defined]
    # The blocker's call had started; then the three prompts together, then the others alone.
    assert calls == [3, 1, 1]
    for prompt, image in zip(prompts, images, strict=True):
        assert same_image(image, alone(engine, ask(prompt, guidance=guidance))), prompt


def test_a_member_cancelled_before_the_call_leaves_the_others_as_they_are_alone(
    batching: tuple[Engine, list[int]],
) -> None:
    engine, calls = batching
    release, _ = blocker(engine)
    first, gone, last = (engine.submit([ask(p)], embedding_scope=None) for p in ("one", "two", "three"))
    assert engine.cancel(gone)
    calls.clear()
    release.set()
    kept = [first.result(timeout=120)[0].data, last.result(timeout=120)[0].data]
    assert gone.cancelled() and calls == [2]
    assert same_image(kept[0], alone(engine, ask("one"))) and same_image(kept[1], alone(engine, ask("three")))


def test_jobs_submitted_together_to_an_idle_engine_are_gathered_within_the_window(
    batching: tuple[Engine, list[int]],
) -> None:
    engine, calls = batching
    calls.clear()
    jobs = [engine.submit([ask(p, seed=9)], embedding_scope=None) for p in ("north", "south")]
    assert [len(job.result(timeout=120)) for job in jobs] == [1, 1]
    assert calls == [2]


def test_a_call_gathers_no_more_images_than_the_memory_plan_allows(
    batching: tuple[Engine, list[int]],
) -> None:
    engine, calls = batching
    # A plan whose activation budget holds two 128x128 images (one unit: a pixel of a row).
    engine.placement = Placement(
        "none", "cuda", "test", activation_budget=2 * 128 * 128 * 10, bytes_per_unit=10
    )
    release, _ = blocker(engine)
    jobs = [engine.submit([ask(p)], embedding_scope=None) for p in ("a", "b", "c")]
    calls.clear()
    release.set()
    assert [len(job.result(timeout=120)) for job in jobs] == [1, 1, 1]
    assert calls == [2, 1]


def test_the_cpu_default_is_no_batching(models_dir: Path) -> None:
    engine = Engine("tiny", models_dir)
    engine.start(load=False)
    engine.identity_future.result(timeout=120)
    assert engine.max_batch == 1
    engine.close()


def test_metrics_has_a_histogram_of_images_per_model_call(server) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.client.base_url, timeout=120) as client:
        before = client.get("/metrics").text
        assert "# TYPE zimage_engine_batch_size histogram" in before
        threads = [
            threading.Thread(
                target=client.get,
                args=("/run",),
                kwargs={"params": {"prompt": p, "width": 64, "height": 64, "no_cache": True}},
            )
            for p in ("metrics one", "metrics two")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = client.get("/metrics").text

    def total(text: str, name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    images = total(after, "zimage_engine_batch_size_sum") - total(before, "zimage_engine_batch_size_sum")
    assert images == 2 and total(after, "zimage_engine_batch_size_count") > total(
        before, "zimage_engine_batch_size_count"
    )


def test_an_interrupted_member_leaves_the_model_call_and_the_others_go_on(
    batching: tuple[Engine, list[int]],
) -> None:
    engine, calls = batching
    release, _ = blocker(engine)
    stepped: list[int] = []

    def interrupted(step: int, steps: int) -> None:  # what an interrupted ticket's callback does
        stepped.append(step)
        raise JobInterrupted(step, steps)

    stopped = engine.submit([ask("one")], interrupted, embedding_scope=None)
    kept = engine.submit([ask("three")], embedding_scope=None)
    calls.clear()
    release.set()
    image = kept.result(timeout=120)[0].data
    with pytest.raises(JobInterrupted):
        stopped.result(timeout=120)
    assert calls == [2] and stepped == [1]  # detached at its first step; the call went on
    assert same_image(image, alone(engine, ask("three")))
    # Alone in its call, an interrupted job stops the call; the engine goes on.
    alone_stopped = engine.submit([ask("two")], interrupted, embedding_scope=None)
    with pytest.raises(JobInterrupted):
        alone_stopped.result(timeout=120)
    assert engine.submit([ask("two")], embedding_scope=None).result(timeout=120)[0].data
