"""The speed levers applied to a loaded transformer: the attention backend
(pipeline/attention.py), then compilation (pipeline/compile.py), which bakes the
backend into its graphs. The engine applies them after loading; bench/gpu.py
applies them the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.attention import apply_backend, choose_backend, model_attention_shape
from pipeline.compile import CompileSetting, compile_transformer, should_compile, use_cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Levers:
    attention: str  # the backend in use
    compiled: bool


def apply_speed_levers(
    transformer: Any,
    device: str,
    *,
    attention_backend: str = "auto",
    compile: CompileSetting = "auto",
    compile_cache_dir: Path | None = None,
) -> Levers:
    """Choose and set the attention backend, then compile when `compile` says so (its
    caches under `compile_cache_dir`). Raises ValueError for a backend that cannot run."""
    heads, head_dim = model_attention_shape(transformer)
    backend = choose_backend(attention_backend, device, transformer.dtype, heads, head_dim)
    fallback = apply_backend(transformer, backend)
    log.info("attention: %s%s", backend, "; calls with a mask: native" if fallback else "")
    compiled = False
    if should_compile(compile, device):
        if compile_cache_dir is not None:
            use_cache_dir(compile_cache_dir)
        compiled = compile_transformer(transformer)
        log.info(
            "compile: %s; the warm-up compiles every shape",
            "transformer blocks compiled" if compiled else "off",
        )
    return Levers(attention=backend, compiled=compiled)
