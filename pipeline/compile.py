"""Regional torch.compile of the transformer, sized for every shape the service makes,
with the compiled kernels kept on disk so that a restart warms up faster.

`compile_repeated_blocks` (diffusers) compiles the one block class the transformer
repeats (`ZImageTransformerBlock`: 2 refiner stacks and the 30 main layers of the
real model) once and reuses it for every instance. The service's shapes vary in
batch (1..8 images, doubled by guidance), in sequence length (caption tokens and
image size) and in whether an attention mask is passed (guidance > 0 with a
prompt and a negative prompt of different lengths), so the blocks are compiled
with dynamic shapes: a few graphs cover every request instead of one per shape.
What still makes separate graphs, all of them compiled by the warm-up
(pipeline.warmup, `compile_variants`): caption blocks (no modulation) and image
blocks; a batch of 1 (size-1 dimensions are always specialised) and a larger
batch; with and without a mask. That is 6-8 graphs, under RECOMPILE_LIMIT.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

CompileSetting = Literal["auto", "on", "off"]
# Graphs one compiled block may keep before torch gives up compiling it and runs it
# eagerly (torch's default is 8, which the 6-8 graphs above would nearly exhaust).
RECOMPILE_LIMIT = 32


def should_compile(setting: CompileSetting, device: str) -> bool:
    """`auto` compiles on CUDA only: on the CPU the compile costs minutes for little gain."""
    return setting == "on" or (setting == "auto" and device.startswith("cuda"))


def use_cache_dir(directory: Path) -> None:
    """Keep torch.compile's caches (FX graphs, AOTAutograd, Triton kernels, autotuning)
    under `directory`, so a restart reuses them. Must run before the first compile.
    Several processes may share the directory: torch writes it atomically, under locks."""
    directory.mkdir(parents=True, exist_ok=True)
    # torch's documented switch (TORCHINDUCTOR_CACHE_DIR); it is read at each use,
    # and child processes inherit it, which is what we want.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)


def compile_transformer(transformer: Any) -> bool:
    """Compile the repeated blocks with fullgraph=True (a graph break is an error, not a
    silent slowdown) and dynamic shapes. Returns False, with a warning, when the blocks
    carry offload hooks (sequential offload, group offloading), which cannot be
    compiled into one graph."""
    import torch

    # torch's compiler settings are per thread: this runs on the engine thread, where
    # every model call, and so every compile, happens.
    blocks = [m for m in transformer.modules() if type(m).__name__ in transformer._repeated_blocks]
    # accelerate's per-module hooks (sequential) and diffusers' group offloading
    # (model mode) both move weights inside the blocks' forward, outside any graph.
    hooked = ("_hf_hook", "_diffusers_hook")
    if any(hasattr(m, name) for block in blocks for m in block.modules() for name in hooked):
        log.warning(
            "compile: skipped, the transformer's blocks are offloaded (--offload model or sequential)"
        )
        return False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
    return True


def compiled_graphs() -> int:
    """Graphs compiled in this process so far (torch's own counter), for the logs."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
