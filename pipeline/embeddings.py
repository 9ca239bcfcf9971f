"""A cache of text-encoder outputs, so a known prompt skips the text encoder."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
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

    Single flight: callers of a key being encoded (the engine's own job and the
    prompt prefetch of pipeline/prefetch.py) wait for that one encoding instead of
    running the encoder again; when it fails, one of them encodes anew.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: LRUCache[EmbeddingKey, list[Any]] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=tensors_nbytes
        )
        self._lock = threading.Lock()
        self._flights: dict[EmbeddingKey, Future[list[Any]]] = {}  # keys being encoded
        self.hits = self.misses = self.prefetched = 0

    def get_or_encode(
        self, key: EmbeddingKey, encode: Callable[[], list[Any]], *, prefetch: bool = False
    ) -> list[Any]:
        """The tensors of `key`: kept, being encoded (waited for), or encoded now by
        `encode` (a miss; counted as `prefetched` too with `prefetch`). Raises what
        `encode` raises, to the caller that ran it."""
        while True:
            with self._lock:
                found = self._lru.get(key)
                if found is not None:
                    self.hits += 1
                    return found
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = Future()
                    self.misses += 1
                    self.prefetched += prefetch
                    break
            try:
                tensors = flight.result()  # another caller's encoding of this key
            except Exception:
                continue  # it failed; try again (maybe encoding it here)
            with self._lock:
                self.hits += 1
            return tensors
        try:
            tensors = encode()
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
            flight.set_exception(exc)
            raise
        with self._lock:
            if 0 < tensors_nbytes(tensors) <= self.max_bytes:
                self._lru[key] = tensors
            del self._flights[key]
        flight.set_result(tensors)
        return tensors

    def known(self, key: EmbeddingKey) -> bool:
        """Whether `key` is kept or being encoded."""
        with self._lock:
            return key in self._lru or key in self._flights

    def count_miss(self) -> None:
        """Count an encoding done outside the cache (a prompt that must not be kept)."""
        with self._lock:
            self.misses += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "prefetched": self.prefetched,
                "entries": len(self._lru),
                "bytes": int(self._lru.currsize),
            }
