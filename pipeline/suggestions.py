"""Near-repeats for the generation service: suggestions on a miss, and the opt-in
approximate hit (`similar_threshold`), never a substitution that is not labelled."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from cache import Entry, Hit, LayeredCache, make_key
from pipeline.loading import ModelIdentity
from similarity import Match
from similarity.near_repeats import NearRepeats
from similarity.stored import PROMPT_FIELD, SCOPE_FIELD

# Suggestions at or above this similarity are shown (bench/similarity.py: precision
# 0.45 and recall 0.80 over English and Chinese rewordings; top-1 right 75% of the time).
SUGGEST_MIN = 0.7
SUGGESTIONS = 4
SIMILAR_TIER = "similar"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NearLook:
    """What a miss learnt: its prompt's vector (kept for indexing it once stored) and
    the stored prompts like it, nearest first: `candidates` down to the lowest
    similarity asked for, `shown` those good enough to suggest."""

    vector: np.ndarray
    candidates: tuple[Match, ...]
    min_score: float
    scope: str = "any"  # the index's scope (the served model) they were found in

    @property
    def shown(self) -> tuple[Match, ...]:
        return tuple(m for m in self.candidates if m.score >= self.min_score)


class Suggestions:
    """Asks `near` (the per-namespace indexes) on the service's behalf, off the event loop.

    The scope of every index is the served model's key fields (hashed), so a new
    model's requests are never offered an old model's images. Counts what it did
    for `/api/cache/stats` and `/metrics`: misses given suggestions, suggestions
    shown, suggestions used (a person took one in the UI), approximate hits.
    """

    def __init__(
        self, near: NearRepeats, *, min_score: float = SUGGEST_MIN, limit: int = SUGGESTIONS
    ) -> None:
        self.near = near
        self.min_score = min_score
        self.limit = limit
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @staticmethod
    def scope(identity: ModelIdentity) -> str:
        return make_key(identity.key_fields())[:16]

    async def look(
        self,
        cache: LayeredCache,
        namespace: str,
        identity: ModelIdentity,
        prompt: str,
        floor: float,
        *,
        counted: bool = True,
    ) -> NearLook:
        """The stored prompts of `namespace` at or above min(`floor`, min_score); counted
        as shown unless `counted` is False (the UI's early look: its miss counts them).
        Those good enough to show are checked in `cache` first: one whose image is gone
        (a cache clear, a prune, an eviction) is dropped from the index, not offered."""
        scope = self.scope(identity)

        def run() -> NearLook:
            vector = self.near.embed(prompt)
            found = self.near.search(namespace, vector, self.limit, min(floor, self.min_score), scope=scope)
            return NearLook(vector, tuple(found), self.min_score, scope)

        try:
            look = await asyncio.to_thread(run)
        except Exception:  # a suggestion is never worth failing the request
            log.exception("near-repeats: looking up similar prompts failed")
            return NearLook(np.zeros(0, np.float32), (), self.min_score)
        look = await self._present(cache, namespace, look)
        if look.shown and counted:
            self.count("suggested")
            self.count("suggestions", len(look.shown))
        return look

    async def _present(self, cache: LayeredCache, namespace: str, look: NearLook) -> NearLook:
        """`look` without the shown prompts whose images are no longer stored, which are
        forgotten by the index (so a clear or a prune empties it as it is used)."""
        shown = look.shown
        found = await cache.aget_many(namespace, [m.key for m in shown]) if shown else []
        gone = {m.key for m, hit in zip(shown, found, strict=True) if not isinstance(hit, Hit)}
        if not gone:
            return look
        for key in gone:
            await asyncio.to_thread(self.near.discard, namespace, key, scope=look.scope)
        return replace(look, candidates=tuple(m for m in look.candidates if m.key not in gone))

    async def approximate(
        self, cache: LayeredCache, namespace: str, look: NearLook, threshold: float, width: int, height: int
    ) -> tuple[Match, Entry] | None:
        """The nearest stored image at or above `threshold` of this size, if it is still
        stored (a key whose entry was evicted is forgotten and the next is tried)."""
        for match in look.candidates:
            if match.score < threshold:
                break
            hit = await cache.aget(namespace, match.key)
            if not isinstance(hit, Hit):
                self.near.discard(namespace, match.key, scope=look.scope)
                continue
            if (hit.entry.meta.get("width"), hit.entry.meta.get("height")) == (width, height):
                self.count("approximate_hits")
                return match, hit.entry
        return None

    async def remember(
        self, namespace: str, identity: ModelIdentity, key: str, prompt: str, vector: np.ndarray | None
    ) -> None:
        """Index a newly stored image's prompt (a failure is logged: the image is stored)."""
        if vector is not None and vector.size == 0:
            vector = None  # the look failed: embed again
        try:
            await asyncio.to_thread(self.near.add, namespace, key, prompt, vector, scope=self.scope(identity))
        except Exception:
            log.exception("near-repeats: indexing a stored prompt failed")

    @staticmethod
    def tagged(entry: Entry, prompt: str, identity: ModelIdentity) -> Entry:
        """`entry` with what a rebuild of the index reads back from it: prompt and scope."""
        return replace(
            entry, meta={**entry.meta, PROMPT_FIELD: prompt, SCOPE_FIELD: Suggestions.scope(identity)}
        )

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def stats(self) -> dict[str, int]:
        with self._lock:
            counts = self._counts.copy()
        names = ("suggested", "suggestions", "used", "approximate_hits")
        return {name: counts[name] for name in names} | self.near.stats()
