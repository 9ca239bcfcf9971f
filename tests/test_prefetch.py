"""Encoding the next prompt while the transformer works (pipeline/prefetch.py): the
queued job's prompt is encoded during the running job's denoise (shown by the order of
events the hooks record, never by timings), once (single flight in the embedding
cache), a cancelled job's prefetch disturbs nothing, and every image is byte for byte
the one made without prefetch."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.embeddings import EmbeddingCache
from pipeline.engine import Engine
from pipeline.placement import Placement
from pipeline.prefetch import prefetch_by_default
from pipeline.request import CanonicalRequest
from tests.engines import started

RUNNING, NEXT, AFTER = "a lighthouse at dusk", "a red fox in the snow", "a tin robot on a bike"


@pytest.fixture(scope="module")
def prefetching(models_dir: Path) -> Iterator[Engine]:
    engine = started(Engine("tiny", models_dir, prefetch_prompts=True))  # off on the CPU by default
    yield engine
    engine.close()


@pytest.fixture
def recorder(prefetching: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder(prefetching)
    monkeypatch.setattr(prefetching._pipe, "encode_prompt", recorder.encode_prompt)
    yield recorder


class Recorder:
    """Records, in order, each text encoding (with its thread) and each denoising step
    of the running job; `encoded[text]` is set once `text` was encoded."""

    def __init__(self, engine: Engine) -> None:
        self.original = engine._pipe.encode_prompt
        self.events: list[tuple[str, ...]] = []
        self.encodes: Counter[str] = Counter()
        self.encoded: dict[str, threading.Event] = {t: threading.Event() for t in (RUNNING, NEXT, AFTER)}
        self.on_encode: dict[str, Any] = {}

    def encode_prompt(self, *, prompt: str, **kw: Any) -> Any:
        self.events.append(("encode", prompt, threading.current_thread().name))
        if prompt in self.on_encode:
            self.on_encode[prompt]()
        out = self.original(prompt=prompt, **kw)
        self.encodes[prompt] += 1
        self.events.append(("encoded", prompt))
        if prompt in self.encoded:
            self.encoded[prompt].set()
        return out

    def at(self, event: tuple[str, ...]) -> int:
        return self.events.index(event)


def ask(prompt: str, steps: int = 2) -> CanonicalRequest:
    return CanonicalRequest(prompt, "", 5, 64, 64, steps, 0.0)


def made_alone(engine: Engine, request: CanonicalRequest) -> bytes:
    """`request`'s image with its prompt encoded in its own job (no scope: never cached)."""
    return engine.submit([request], embedding_scope=None).result(timeout=120)[0].data


def test_the_next_prompt_is_encoded_once_during_the_running_denoise_and_images_are_unchanged(
    prefetching: Engine, recorder: Recorder
) -> None:
    queued = threading.Event()

    def running_steps(step: int, steps: int) -> None:
        recorder.events.append(("step", str(step)))
        if step == 1:
            assert queued.wait(60)  # the next job is queued before the step-2 poke
        if step == 2:
            assert recorder.encoded[NEXT].wait(60)

    prefetched = prefetching.embeddings.stats()["prefetched"]
    running = prefetching.submit([ask(RUNNING, steps=4)], running_steps, embedding_scope="t1")
    following = prefetching.submit([ask(NEXT)], embedding_scope="t1")
    queued.set()
    images = running.result(timeout=120)[0].data, following.result(timeout=120)[0].data

    # The next prompt: encoded on the prefetch thread while the running job was between
    # its denoising steps 1 and 3, and never again by its own job.
    [(_, _, thread)] = [e for e in recorder.events if e[:2] == ("encode", NEXT)]
    assert thread.startswith("zimage-prefetch")
    assert recorder.at(("step", "1")) < recorder.at(("encode", NEXT, thread))
    assert recorder.at(("encoded", NEXT)) < recorder.at(("step", "3")) < recorder.at(("step", "4"))
    assert recorder.encodes[NEXT] == 1 and recorder.encodes[RUNNING] == 1
    assert prefetching.embeddings.stats()["prefetched"] == prefetched + 1
    # Byte for byte the images made with each prompt encoded in its own job.
    assert images == (made_alone(prefetching, ask(RUNNING, steps=4)), made_alone(prefetching, ask(NEXT)))


def test_a_queued_job_cancelled_during_its_prefetch_disturbs_nothing(
    prefetching: Engine, recorder: Recorder
) -> None:
    jobs: dict[str, Any] = {}
    queued = threading.Event()
    recorder.on_encode[NEXT] = lambda: jobs["next"].cancel()  # its caller leaves mid-encode

    def running_steps(step: int, steps: int) -> None:
        if step == 1:
            assert queued.wait(60)
        if step == 3:  # the step-3 poke finds the cancelled job gone and takes the one after
            assert recorder.encoded[AFTER].wait(60)

    started_next: list[int] = []
    running = prefetching.submit([ask(RUNNING, steps=4)], running_steps, embedding_scope="t2")
    jobs["next"] = prefetching.submit([ask(NEXT)], lambda s, n: started_next.append(s), embedding_scope="t2")
    after = prefetching.submit([ask(AFTER)], embedding_scope="t2")
    queued.set()
    images = running.result(timeout=120)[0].data, after.result(timeout=120)[0].data

    assert jobs["next"].cancelled() and started_next == []  # it never ran
    assert recorder.encodes == Counter({RUNNING: 1, NEXT: 1, AFTER: 1})
    [(_, _, thread)] = [e for e in recorder.events if e[:2] == ("encode", AFTER)]
    assert thread.startswith("zimage-prefetch")
    assert prefetching.queue_depth == 0
    assert images == (made_alone(prefetching, ask(RUNNING, steps=4)), made_alone(prefetching, ask(AFTER)))


def test_a_prompt_that_must_not_be_kept_is_never_prefetched(prefetching: Engine, recorder: Recorder) -> None:
    queued = threading.Event()

    def running_steps(step: int, steps: int) -> None:
        if step == 1:
            assert queued.wait(60)

    running = prefetching.submit([ask(RUNNING, steps=3)], running_steps, embedding_scope="t3")
    secret = prefetching.submit([ask(NEXT)], embedding_scope=None)
    queued.set()
    running.result(timeout=120), secret.result(timeout=120)
    [(_, _, thread)] = [e for e in recorder.events if e[:2] == ("encode", NEXT)]
    assert thread.startswith("zimage-engine")  # encoded in its own job, kept nowhere


def test_concurrent_callers_of_one_key_share_one_encoding() -> None:
    cache, entered, release = EmbeddingCache(1 << 20), threading.Event(), threading.Event()
    calls: list[int] = []

    def encode() -> list[Any]:
        import torch

        calls.append(1)
        entered.set()
        assert release.wait(30)
        return [torch.ones(4)]

    key = ("t", "a fox", 512, "f", "bfloat16")
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(cache.get_or_encode(key, encode, prefetch=True)))
    first.start()
    assert entered.wait(30) and cache.known(key)
    second = threading.Thread(target=lambda: results.append(cache.get_or_encode(key, encode)))
    second.start()
    release.set()
    first.join(30), second.join(30)
    assert len(calls) == 1 and results[0] is results[1]
    assert cache.stats() | {"bytes": 0} == {"hits": 1, "misses": 1, "prefetched": 1, "entries": 1, "bytes": 0}


def test_only_the_text_encoder_on_the_cpu_beside_a_cuda_transformer_prefetches_by_default() -> None:
    def plan(mode: str, device: str = "cuda") -> Placement:
        return Placement(mode, device, "test")

    assert prefetch_by_default(plan("text-encoder"))
    for mode in ("none", "stream-text-encoder", "model", "sequential"):
        assert not prefetch_by_default(plan(mode))
    assert not prefetch_by_default(plan("none", "cpu")) and not prefetch_by_default(None)
