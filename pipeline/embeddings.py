"""A cache of text-encoder outputs, so a known prompt skips the text encoder."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

# What the pipeline's encode_prompt pads and truncates to.
MAX_SEQUENCE_LENGTH = 512

# scope (the namespace), prompt, max sequence length, model fingerprint, dtype
EmbeddingKey = tuple[str, str, int, str, str]


def tensors_nbytes(tensors: list[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class EmbeddingCache:
    """LRU of prompt embeddings (lists of CPU tensors), bounded in bytes.

    Keyed by (scope, canonical prompt, max sequence length, model fingerprint,
    dtype), so a new seed or size for a known prompt reuses the encoder's output;
    the pipeline gives bit-identical images for `prompt_embeds` and for the text.
    The scope is the caller's namespace: a hit is only ever one's own earlier
    prompt, so how fast the encoder step was (Server-Timing, hit counters) tells
    no one about another namespace's prompts. Thread-safe. `max_bytes=0`
    disables it (every call encodes).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: LRUCache[EmbeddingKey, list[Any]] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=tensors_nbytes
        )
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_encode(self, key: EmbeddingKey, encode: Callable[[], list[Any]]) -> list[Any]:
        with self._lock:
            found = self._lru.get(key)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
        tensors = encode()
        if 0 < tensors_nbytes(tensors) <= self.max_bytes:
            with self._lock:
                self._lru[key] = tensors
        return tensors

    def count_miss(self) -> None:
        """Count an encoding done outside the cache (a prompt that must not be kept)."""
        with self._lock:
            self.misses += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "entries": len(self._lru),
                "bytes": int(self._lru.currsize),
            }
