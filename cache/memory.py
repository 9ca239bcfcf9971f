"""L1: an in-process LRU of encoded images, bounded in bytes."""

from __future__ import annotations

import threading

from cachetools import LRUCache

from cache.entry import MISS, Entry, _Miss


class MemoryTier:
    """LRU over (namespace, key) -> Entry, bounded by the total size of the entries.

    Guarantees: thread-safe (one lock around the LRU); an entry larger than the
    whole budget is not stored; eviction is least recently used first. Lost on
    restart by design: the disk tier below keeps what must survive. Never raises
    on lookups.
    """

    name = "memory"
    blocking = False

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: LRUCache[tuple[str, str], Entry] = LRUCache(maxsize=max_bytes, getsizeof=Entry.size.fget)
        self._lock = threading.Lock()

    def get(self, namespace: str, key: str) -> Entry | _Miss:
        with self._lock:
            return self._lru.get((namespace, key), MISS)

    def put(self, namespace: str, key: str, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        with self._lock:
            self._lru[(namespace, key)] = entry

    def discard(self, namespace: str, key: str) -> None:
        with self._lock:
            self._lru.pop((namespace, key), None)

    def clear(self, namespace: str) -> int:
        """Remove every entry of `namespace`; returns how many."""
        with self._lock:
            doomed = [k for k in self._lru if k[0] == namespace]
            for k in doomed:
                del self._lru[k]
        return len(doomed)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._lru), "bytes": int(self._lru.currsize)}
