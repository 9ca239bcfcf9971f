"""In-process engines on the tiny model, for the tests that drive the pipeline without
a server (the `engine` and `models_dir` fixtures of tests/conftest.py use them)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.engine import Engine, EngineState

# A negative prompt long enough to pad differently from a short positive one.
LONG_NEGATIVE = "blurry, low quality, watermark, extra fingers, oversaturated, " * 4


def started(engine: Engine, timeout_s: float = 120) -> Engine:
    """`engine`, started and settled ready (loaded and warmed); fails with its error."""
    engine.start()
    engine.wait_settled(timeout_s)
    assert engine.state == EngineState.READY, engine.error
    return engine


def pixels(png: bytes) -> np.ndarray:
    """An encoded image's RGB pixels."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
