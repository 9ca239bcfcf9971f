"""The tiers in order, as one cache: look up top-down, promote hits, store everywhere."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Protocol

from cache.entry import MISS, Entry, _Miss

log = logging.getLogger(__name__)

# Copies of hits into slow tiers (a Redis hit onto the disk: a file and an fsync,
# about 0.35 ms of CPU for 150 KB) are written by a background writer once the
# cache is quiet (no lookup for QUIET_S), or once the oldest has waited
# MAX_DELAY_S: a burst of hits is not slowed down by its own copies, and under
# steady load they are written all the same, late. Past MAX_PENDING_BYTES
# waiting, further copies are skipped: they only save a later lookup, and the
# entry stays where it was found.
QUIET_S = 0.05
MAX_DELAY_S = 2.0
MAX_PENDING_BYTES = 64 << 20


class TierUnavailable(Exception):
    """A tier could not serve a call. `counted=False` marks a call skipped on
    purpose (a tier backing off after failures): a miss, but not a new error."""

    def __init__(self, message: str, *, counted: bool = True) -> None:
        super().__init__(message)
        self.counted = counted


class Tier(Protocol):
    """A tier. One with an `async def aget(namespace, key)` is read with it from the
    event loop; otherwise `get` runs there if `blocking` is False, else on a thread."""

    name: str
    blocking: bool  # False: get/put never wait on I/O (safe on the event loop)

    def get(self, namespace: str, key: str) -> Entry | _Miss: ...
    def put(self, namespace: str, key: str, entry: Entry) -> None: ...
    def discard(self, namespace: str, key: str) -> None: ...
    def clear(self, namespace: str) -> int: ...
    def stats(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Hit:
    entry: Entry
    tier: str


class LayeredCache:
    """Tiers fastest first (memory, disk, ...), behaving as one cache.

    Guarantees: a hit in a lower tier is copied into every tier above it, into
    non-blocking ones (memory) before the hit is returned, into blocking ones
    (disk) by a background writer when the cache is quiet (see QUIET_S), so a
    Redis hit neither waits for an fsync nor shares the CPU with one; a
    store writes every tier; a tier that raises is counted in `errors` and
    treated as a miss (on get) or skipped (on put): a broken tier never fails a
    request. One warning is logged when a tier starts failing and one line when
    it works again, not one per request. Thread-safe as far as each tier is.
    """

    def __init__(self, tiers: list[Tier]) -> None:
        if not tiers:
            raise ValueError("LayeredCache needs at least one tier")
        self.tiers = tiers
        self.errors: Counter[str] = Counter()
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        # The copies waiting for the writer: (queued at, tier, namespace, key, entry).
        self._copies: deque[tuple[float, Tier, str, str, Entry]] = deque()
        self._copies_changed = threading.Condition()
        self._pending_bytes = 0  # queued or being written: 0 when every copy is written
        self._last_read = 0.0  # time.monotonic() of the latest lookup
        self._writer: threading.Thread | None = None
        self._closing = False

    def get(self, namespace: str, key: str) -> Hit | _Miss:
        self._last_read = time.monotonic()
        for depth, tier in enumerate(self.tiers):
            try:
                entry = tier.get(namespace, key)
            except Exception as exc:
                self._count_error(tier, "get", exc)  # then treated as a miss
                continue
            if hit := self._found(depth, namespace, key, entry):
                return hit
        return MISS

    async def aget(self, namespace: str, key: str) -> Hit | _Miss:
        """`get` for the event loop, with the same guarantees: each tier is read the
        cheapest way it allows (see Tier), so a memory hit, a Redis hit and a miss
        take no thread when the tiers are memory, disk and Redis."""
        self._last_read = time.monotonic()
        for depth, tier in enumerate(self.tiers):
            try:
                read = getattr(tier, "aget", None)
                entry: Entry | _Miss
                if read is not None:
                    entry = await read(namespace, key)
                elif not getattr(tier, "blocking", True):
                    entry = tier.get(namespace, key)
                else:
                    entry = await asyncio.to_thread(tier.get, namespace, key)
            except Exception as exc:
                self._count_error(tier, "get", exc)  # then treated as a miss
                continue
            if hit := self._found(depth, namespace, key, entry):
                return hit
        return MISS

    async def aget_many(self, namespace: str, keys: list[str]) -> list[Hit | _Miss]:
        """`aget` of each key, in order: several looked up together, a single one in
        place (no task to gather it in: the commonest case, one loop step fewer)."""
        if len(keys) == 1:
            return [await self.aget(namespace, keys[0])]
        return list(await asyncio.gather(*(self.aget(namespace, k) for k in keys)))

    def _found(self, depth: int, namespace: str, key: str, entry: Entry | _Miss) -> Hit | None:
        """What the tier at `depth` answered: None for a miss; for a hit, copy it into
        the tiers above it, then hand it out."""
        self._count_success(self.tiers[depth])
        if entry is MISS:
            return None
        assert isinstance(entry, Entry)
        for upper in self.tiers[:depth]:
            if getattr(upper, "blocking", True):
                self._promote_later(upper, namespace, key, entry)
            else:
                self._put_one(upper, namespace, key, entry)
        return Hit(entry, self.tiers[depth].name)

    def wait_promotions(self, timeout_s: float | None = None) -> bool:
        """Wait until the background copies are written; True if none is left."""
        with self._copies_changed:
            return self._copies_changed.wait_for(lambda: self._pending_bytes == 0, timeout_s)

    def _promote_later(self, tier: Tier, namespace: str, key: str, entry: Entry) -> None:
        with self._copies_changed:
            if self._closing or self._pending_bytes + entry.size > MAX_PENDING_BYTES:
                return
            self._copies.append((time.monotonic(), tier, namespace, key, entry))
            self._pending_bytes += entry.size
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_copies, name="cache-promote", daemon=True)
                self._writer.start()
            elif len(self._copies) == 1:
                self._copies_changed.notify_all()  # the writer waits for work: one wake per burst

    def _write_copies(self) -> None:
        """The writer thread: each copy once the cache is quiet or the copy is due;
        everything at once when closing."""
        while True:
            with self._copies_changed:
                while not self._copies and not self._closing:
                    self._copies_changed.wait()
                if not self._copies:
                    return  # closing, and everything written
                queued_at, tier, namespace, key, entry = self._copies[0]
                if not self._closing:
                    due = min(self._last_read + QUIET_S, queued_at + MAX_DELAY_S) - time.monotonic()
                    if due > 0:
                        self._copies_changed.wait(due)
                        continue
                self._copies.popleft()
            try:
                self._put_one(tier, namespace, key, entry)
            finally:
                with self._copies_changed:
                    self._pending_bytes -= entry.size
                    self._copies_changed.notify_all()  # wait_promotions

    def put(self, namespace: str, key: str, entry: Entry) -> None:
        # Slowest (most durable) first: once the memory tier has it, readers
        # stop looking further down.
        for tier in reversed(self.tiers):
            self._put_one(tier, namespace, key, entry)

    def discard(self, namespace: str, key: str) -> None:
        for tier in self.tiers:
            try:
                tier.discard(namespace, key)
            except Exception as exc:
                self._count_error(tier, "discard", exc)

    def clear(self, namespace: str) -> dict[str, int | None]:
        """Remove every entry of `namespace` from every tier: count per tier (None: failed)."""
        removed: dict[str, int | None] = {}
        for tier in self.tiers:
            try:
                removed[tier.name] = tier.clear(namespace)
            except Exception as exc:
                self._count_error(tier, "clear", exc)
                removed[tier.name] = None
        return removed

    def stats(self) -> dict[str, dict[str, Any]]:
        """Entries, bytes and errors per tier, by tier name."""
        out: dict[str, dict[str, Any]] = {}
        for tier in self.tiers:
            try:
                sizes = tier.stats()
            except Exception as exc:
                self._count_error(tier, "stats", exc)
                sizes = {"entries": None, "bytes": None}
            out[tier.name] = {**sizes, "errors": self.errors[tier.name]}
        return out

    def close(self) -> None:
        """Write the promotions already queued, stop the promotion thread, and close every
        tier that holds connections or threads (the Redis tier). Idempotent."""
        with self._copies_changed:
            self._closing = True
            self._copies_changed.notify_all()
        if self._writer is not None:
            self._writer.join()
        for tier in self.tiers:
            close = getattr(tier, "close", None)
            if close is not None:
                close()

    def _put_one(self, tier: Tier, namespace: str, key: str, entry: Entry) -> None:
        try:
            tier.put(namespace, key, entry)
        except Exception as exc:
            self._count_error(tier, "put", exc)
        else:
            self._count_success(tier)

    def _count_error(self, tier: Tier, op: str, exc: Exception) -> None:
        if isinstance(exc, TierUnavailable) and not exc.counted:
            return
        with self._lock:
            self.errors[tier.name] += 1
            first = tier.name not in self._failing
            self._failing.add(tier.name)
        if first:
            log.warning(
                "%s cache tier failed on %s (%s); carrying on without it",
                tier.name,
                op,
                exc,
                exc_info=not isinstance(exc, TierUnavailable | OSError),
            )
        else:
            log.debug("%s cache tier failed on %s: %s", tier.name, op, exc)

    def _count_success(self, tier: Tier) -> None:
        with self._lock:
            recovered = tier.name in self._failing
            self._failing.discard(tier.name)
        if recovered:
            log.warning("%s cache tier works again", tier.name)
