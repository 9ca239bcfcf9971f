"""--compile on the CPU with the tiny model (inductor and gcc, as on a GPU box with Triton):
the warm-up compiles every shape the service makes, nothing breaks the graph, nothing
recompiles after /ready, and a restart finds the compiled kernels under --cache-dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from pipeline.compile import RECOMPILE_LIMIT, should_compile
from pipeline.engine import Engine
from pipeline.request import CanonicalRequest
from pipeline.warmup import warm_up
from tests.engines import LONG_NEGATIVE, started

T = TypeVar("T")


def compiled_engine(models_dir: Path, cache_dir: Path) -> Engine:
    return Engine(
        "tiny",
        models_dir,
        compile="on",
        compile_cache_dir=cache_dir,
        warmup=partial(warm_up, sizes=[(64, 64)]),
    )


def on_engine_thread(engine: Engine, call: Callable[[], T]) -> T:
    return engine._executor.submit(call).result(timeout=60)


@pytest.fixture
def fresh_dynamo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # use_cache_dir sets TORCHINDUCTOR_CACHE_DIR; monkeypatch restores it afterwards.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset-by-the-test")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compile_is_on_for_cuda_only_unless_asked() -> None:
    assert should_compile("auto", "cuda") and should_compile("auto", "cuda:1")
    assert not should_compile("auto", "cpu") and should_compile("on", "cpu")
    assert not should_compile("off", "cuda")


def test_after_the_warm_up_nothing_recompiles_or_breaks_the_graph_and_a_restart_hits_the_cache(
    tmp_path: Path, fresh_dynamo: None
) -> None:
    models, cache = tmp_path / "models", tmp_path / "compile"
    engine = started(compiled_engine(models, cache), timeout_s=600)
    try:
        assert engine.compiled
        # torch's config is per thread; the engine's thread is where every model call runs.
        assert on_engine_thread(engine, lambda: torch._dynamo.config.recompile_limit) >= RECOMPILE_LIMIT
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 6  # caption and image blocks x batch 1, batch n, with a mask
        assert not counters["graph_break"]

        # Every later shape must reuse those graphs: a recompile now raises.
        on_engine_thread(engine, lambda: setattr(torch._dynamo.config, "error_on_recompile", True))
        long_prompt = "a much longer prompt about a harbour at night " * 4
        jobs = [  # batches > 1, guidance > 0 with and without a mask, other sizes and lengths
            [CanonicalRequest("a lantern on a pier", "", s, 96, 80, 2, 0.0) for s in range(3)],
            [CanonicalRequest(long_prompt, "", s, 128, 64, 2, 0.0) for s in (1, 2)],
            [CanonicalRequest("x", LONG_NEGATIVE, 7, 64, 112, 2, 2.0)],
            [CanonicalRequest("rain", LONG_NEGATIVE, s, 80, 80, 3, 4.0) for s in range(4)],
            [CanonicalRequest("same length", "same length", 3, 64, 64, 2, 1.5)],
        ]
        for job in jobs:
            images = engine.submit(job).result(timeout=300)
            assert len(images) == len(job) and all(i.data[:4] == b"\x89PNG" for i in images)
        assert counters["stats"]["unique_graphs"] == graphs
        assert not counters["graph_break"]
    finally:
        engine.close()
    assert any((cache / "fxgraph").rglob("*")), "compiled graphs are kept under the cache directory"

    # A restart (a fresh compiler state in the same directory) finds every graph on disk.
    torch._dynamo.reset()
    counters.clear()
    restarted = started(compiled_engine(models, cache), timeout_s=600)
    restarted.close()
    inductor = counters["inductor"]
    assert inductor["fxgraph_cache_hit"] >= graphs - 1 and inductor["fxgraph_cache_miss"] == 0


def test_blocks_offloaded_module_by_module_are_not_compiled(tmp_path: Path) -> None:
    from accelerate.hooks import ModelHook, add_hook_to_module

    from pipeline.compile import compile_transformer
    from pipeline.loading import load_pipeline, resolve_model

    pipe, _ = load_pipeline(resolve_model("tiny", tmp_path))
    block = pipe.transformer.layers[0]
    add_hook_to_module(block.attention.to_q, ModelHook())  # as sequential CPU offload does
    assert compile_transformer(pipe.transformer) is False
    assert block._compiled_call_impl is None


def test_blocks_streamed_by_group_offloading_are_not_compiled(tmp_path: Path) -> None:
    # --offload model: diffusers' group offloading wraps each block's forward with the
    # copies of its weights, which a fullgraph compile cannot take in.
    from diffusers.hooks import apply_group_offloading

    from pipeline.compile import compile_transformer
    from pipeline.loading import load_pipeline, resolve_model

    pipe, _ = load_pipeline(resolve_model("tiny", tmp_path))
    apply_group_offloading(
        pipe.transformer, onload_device="cpu", offload_type="block_level", num_blocks_per_group=1
    )
    assert compile_transformer(pipe.transformer) is False
    assert pipe.transformer.layers[0]._compiled_call_impl is None
