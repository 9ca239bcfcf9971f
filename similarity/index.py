"""One namespace's prompt vectors: exact cosine while small, HNSW (usearch) past that."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from usearch.index import Index

# Past this many vectors a search goes to the HNSW graph instead of a scan of all
# of them: where the scan's p50 passes the graph's on this machine
# (`python -m bench.similarity --lookup`, docs/PERFORMANCE.md).
EXACT_LIMIT = 8192
# Candidates the graph search keeps (usearch's default is 64): more finds the planted
# near neighbour more often at a little more time (bench/similarity.py's recall).
EXPANSION_SEARCH = 128


@dataclass(frozen=True)
class Match:
    """A stored prompt close to the one asked about; `score` is the cosine similarity."""

    key: str
    prompt: str
    score: float


class VectorIndex:
    """Cache keys with their prompts' unit vectors; nearest by cosine similarity.

    Up to `exact_limit` vectors a search is an exact scan (one matrix-vector
    product); past it every vector moves into a usearch HNSW graph (half-precision,
    M=16, ef 128), whose time and recall against the scan `python -m
    bench.similarity` measures (docs/PERFORMANCE.md). A key is held once (adding it again changes
    nothing). `discard` drops a key whose entry is gone. Thread-safe.
    """

    def __init__(self, dim: int, *, exact_limit: int = EXACT_LIMIT) -> None:
        self.dim = dim
        self.exact_limit = exact_limit
        self._keys: list[str] = []
        self._prompts: list[str] = []
        self._labels: dict[str, int] = {}
        self._vectors = np.zeros((64, dim), np.float32)
        self._graph: Index | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, key: str) -> bool:
        return key in self._labels

    @property
    def approximate(self) -> bool:
        """Whether searches go to the HNSW graph (past `exact_limit`)."""
        return self._graph is not None

    def add(self, key: str, prompt: str, vector: np.ndarray) -> bool:
        """Hold `key` with its prompt; False if it was held already."""
        return self.add_many([key], [prompt], vector.reshape(1, -1)) == 1

    def add_many(self, keys: list[str], prompts: list[str], vectors: np.ndarray, *, threads: int = 1) -> int:
        """Hold each key with its prompt and row of `vectors` (one graph insertion
        for all, for loading, on `threads` threads); keys held already are skipped.
        Returns how many were new."""
        with self._lock:
            rows = []
            for i, key in enumerate(keys):
                if key in self._labels:
                    continue
                self._labels[key] = len(self._keys)
                self._keys.append(key)
                self._prompts.append(prompts[i])
                rows.append(i)
            if not rows:
                return 0
            first = len(self._keys) - len(rows)
            new = np.ascontiguousarray(vectors[rows], dtype=np.float32)
            if self._graph is not None:
                # One thread by default: the server's cores are for the model and the requests.
                self._graph.add(np.arange(first, len(self._keys), dtype=np.uint64), new, threads=threads)
                return len(rows)
            if len(self._keys) > len(self._vectors):
                grown = np.zeros((max(2 * len(self._vectors), len(self._keys)), self.dim), np.float32)
                grown[:first] = self._vectors[:first]
                self._vectors = grown
            self._vectors[first : len(self._keys)] = new
            if len(self._keys) > self.exact_limit:
                self._to_graph(threads)
            return len(rows)

    def discard(self, key: str) -> None:
        """Forget `key` (its entry was evicted); nothing if it is not held."""
        with self._lock:
            label = self._labels.pop(key, None)
            if label is None:
                return
            if self._graph is not None:
                self._graph.remove(label)
            else:
                self._vectors[label] = 0.0  # a zero row scores 0: below any threshold

    def search(self, vector: np.ndarray, k: int, min_score: float) -> list[Match]:
        """Up to `k` held prompts with similarity >= `min_score` (> 0), nearest first."""
        with self._lock:
            if not self._labels:
                return []
            if self._graph is not None:
                found = self._graph.search(vector.astype(np.float32), min(k, len(self._labels)), threads=1)
                # usearch's cosine distance is 1 - similarity
                pairs = [
                    (int(label), 1.0 - float(d)) for label, d in zip(found.keys, found.distances, strict=True)
                ]
            else:
                # einsum, not `@`: one thread, where BLAS's threads cost more than they
                # save for one vector and fight the model for the cores.
                scores = np.einsum("ij,j->i", self._vectors[: len(self._keys)], vector)
                top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
                pairs = [(int(i), float(scores[i])) for i in top]
            return sorted(
                (
                    Match(self._keys[label], self._prompts[label], round(score, 4))
                    for label, score in pairs
                    if score >= min_score and self._keys[label] in self._labels
                ),
                key=lambda m: -m.score,
            )

    def _to_graph(self, threads: int) -> None:
        """Move every held vector into an HNSW graph (called with the lock held)."""
        graph = Index(
            ndim=self.dim, metric="cos", dtype="f16", connectivity=16, expansion_search=EXPANSION_SEARCH
        )
        labels = np.array(sorted(self._labels.values()), dtype=np.uint64)
        if len(labels):
            graph.add(labels, self._vectors[labels.astype(np.int64)], threads=threads)
        self._graph = graph
        self._vectors = np.zeros((0, self.dim), np.float32)
