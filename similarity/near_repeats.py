"""Stored prompts like a new one, per namespace: the index, its journal, the shared stream."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache.keys import is_namespace
from similarity.embedding import Embedder
from similarity.index import EXACT_LIMIT, Match, VectorIndex
from similarity.journal import Journal, JournalDamaged, Record
from similarity.shared import SharedPrompts

log = logging.getLogger(__name__)

# Prompts embedded per call while rebuilding (a batch amortises the model's weights).
REBUILD_BATCH = 64

# The stored (key, prompt) pairs of a namespace and scope: what a lost journal is rebuilt from.
StoredPrompts = Callable[[str, str], Iterable[tuple[str, str]]]


@dataclass
class _Space:
    """One namespace's state, for one scope."""

    name: str  # scope/namespace
    namespace: str
    scope: str
    index: VectorIndex
    journal: Journal | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stream_id: str = "0"
    loaded: bool = False
    rebuilding: bool = False


class NearRepeats:
    """Finds stored prompts close to a new one, in the asker's namespace only.

    Each namespace has its own index (`VectorIndex`) per `scope` (the caller's
    name for the served model, so another model's images are never offered),
    loaded on first use from its journal under `directory`
    (`<dir>/<embedder>/<scope>/<namespace>.log`); a journal that is missing or
    damaged is rebuilt in a background thread from `stored_prompts(namespace,
    scope)` (the cache's entries), and the index fills as it goes. With
    `shared`, each search first reads what other replicas added to the
    namespace's stream. A lookup touches only its own namespace's index, journal
    and stream, so its time says nothing about other namespaces. Failures of the
    journal (OSError) or of Redis are logged and the index in memory carries on.
    Thread-safe; every method blocks (call it from a thread).
    """

    def __init__(
        self,
        embedder: Embedder,
        directory: Path | None,
        *,
        stored_prompts: StoredPrompts | None = None,
        shared: SharedPrompts | None = None,
        exact_limit: int = EXACT_LIMIT,
    ) -> None:
        self.embedder = embedder
        self.directory = directory / embedder.name if directory is not None else None
        self.stored_prompts = stored_prompts
        self.shared = shared
        self.exact_limit = exact_limit
        self._spaces: dict[str, _Space] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def embed(self, prompt: str) -> np.ndarray:
        return self.embedder.embed([prompt])[0]

    def search(
        self, namespace: str, vector: np.ndarray, k: int, min_score: float, *, scope: str = "any"
    ) -> list[Match]:
        """Up to `k` stored prompts of `namespace` with similarity >= `min_score`, nearest first."""
        space = self._space(namespace, scope)
        self._refresh(space)
        return space.index.search(vector, k, min_score)

    def add(
        self, namespace: str, key: str, prompt: str, vector: np.ndarray | None = None, *, scope: str = "any"
    ) -> None:
        """Index a stored entry's prompt (embedded here unless `vector` is given); kept
        in the journal and, with Redis, published to the other replicas."""
        space = self._space(namespace, scope)
        if key in space.index:
            return
        record = Record(key, prompt, self.embed(prompt) if vector is None else vector)
        if not space.index.add(key, prompt, record.vector):
            return
        if space.journal is not None:
            try:
                space.journal.append(record)
            except OSError as exc:
                log.warning("near-repeats: could not write %s: %s", space.journal.path, exc)
        if self.shared is not None and self.shared.available:
            try:
                self.shared.publish(space.name, record)
            except Exception as exc:  # any Redis failure: the others just do not see this one
                log.warning("near-repeats: could not publish to Redis: %s", exc)

    def discard(self, namespace: str, key: str, *, scope: str = "any") -> None:
        """Forget a key whose entry is gone (evicted): it is no longer suggested."""
        if (space := self._spaces.get(f"{scope}/{namespace}")) is not None:
            space.index.discard(key)

    def stats(self) -> dict[str, int]:
        return {"namespaces": len(self._spaces), "prompts": sum(len(s.index) for s in self._spaces.values())}

    def wait_rebuilt(self, timeout_s: float | None = None) -> None:
        """Wait for the rebuilds started so far (tests, and `close`)."""
        for thread in list(self._threads):
            thread.join(timeout_s)

    def close(self) -> None:
        self.wait_rebuilt(5.0)
        if self.shared is not None:
            self.shared.close()

    def _space(self, namespace: str, scope: str) -> _Space:
        if not is_namespace(namespace) or not is_namespace(scope):
            raise ValueError(f"not a namespace and a scope: {namespace!r}, {scope!r}")
        name = f"{scope}/{namespace}"
        with self._lock:
            if (space := self._spaces.get(name)) is not None:
                return space
            journal = None
            if self.directory is not None:
                path = self.directory / scope / f"{namespace}.log"
                journal = Journal(path, self.embedder.name, self.embedder.dim)
            index = VectorIndex(self.embedder.dim, exact_limit=self.exact_limit)
            space = self._spaces[name] = _Space(name, namespace, scope, index, journal)
        with space.lock:  # a second caller waits for the loaded index; other namespaces do not
            if not space.loaded:
                self._load(space)
                space.loaded = True
        return space

    def _load(self, space: _Space) -> None:
        """Read the journal; rebuild it from the stored entries if it is lost or damaged."""
        if space.journal is None:
            return
        try:
            records = space.journal.read()
            space.index.add_many([r.key for r in records], [r.prompt for r in records], _rows(records, space))
            return
        except FileNotFoundError:
            reason = "no journal"
        except JournalDamaged as exc:
            reason = str(exc)
        except OSError as exc:
            log.warning("near-repeats: cannot read %s (%s); the index starts empty", space.journal.path, exc)
            return
        if self.stored_prompts is not None:
            log.info(
                "near-repeats: rebuilding namespace %r from the cache's entries (%s)", space.namespace, reason
            )
            space.rebuilding = True
            thread = threading.Thread(target=self._rebuild, args=(space,), daemon=True, name="near-rebuild")
            self._threads.append(thread)
            thread.start()

    def _rebuild(self, space: _Space) -> None:
        assert self.stored_prompts is not None and space.journal is not None
        try:
            records: list[Record] = []
            batch: list[tuple[str, str]] = []
            for pair in [*self.stored_prompts(space.namespace, space.scope), None]:
                if pair is not None:
                    batch.append(pair)
                if batch and (pair is None or len(batch) == REBUILD_BATCH):
                    vectors = self.embedder.embed([prompt for _, prompt in batch])
                    space.index.add_many([k for k, _ in batch], [p for _, p in batch], vectors)
                    records += [Record(k, p, v) for (k, p), v in zip(batch, vectors, strict=True)]
                    batch = []
            with space.lock:
                space.journal.replace(records)
                space.journal.read()  # from here on, read only what others append
            log.info("near-repeats: namespace %r rebuilt with %d prompts", space.namespace, len(records))
        except Exception:
            log.exception(
                "near-repeats: rebuilding namespace %r failed; it holds what it has", space.namespace
            )
        finally:
            space.rebuilding = False

    def _refresh(self, space: _Space) -> None:
        """Take in what other processes added since the last look: the journal's new
        records (processes sharing the cache directory) and the shared stream (replicas)."""
        found: list[Record] = []
        if space.journal is not None and not space.rebuilding:
            try:
                with space.lock:
                    found += space.journal.read()
            except FileNotFoundError:
                pass
            except (JournalDamaged, OSError) as exc:
                log.warning("near-repeats: %s; the index in memory carries on", exc)
        if self.shared is not None and self.shared.available:
            try:
                with space.lock:
                    records, space.stream_id = self.shared.read(space.name, space.stream_id)
                found += records
            except Exception as exc:
                log.warning("near-repeats: could not read Redis: %s", exc)
        fresh = [r for r in found if r.key not in space.index]
        if fresh:
            space.index.add_many([r.key for r in fresh], [r.prompt for r in fresh], _rows(fresh, space))


def _rows(records: list[Record], space: _Space) -> np.ndarray:
    if not records:
        return np.zeros((0, space.index.dim), np.float32)
    return np.stack([r.vector for r in records])
