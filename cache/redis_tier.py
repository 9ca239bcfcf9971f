"""L3: a Redis shared by replicas, with TTLs, plus the cross-replica generation lock."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.lock import Lock
from redis.retry import Retry

from cache.entry import MISS, CorruptEntry, Entry, UnverifiableEntry, _Miss, decode_record, encode_record
from cache.keys import SCHEMA_VERSION
from cache.layered import TierUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
# After a failure, calls fail fast for this long (doubling up to the maximum)
# instead of each request paying a connect timeout while Redis is down.
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 5.0
SCAN_LIMIT = 200_000


class RedisTier:
    """Entries as Redis strings `zimage:v<schema>:<namespace>:<key>` with a TTL.

    The value is the same checked record as on disk (header with key, size and
    encoding, the bytes, then a SHA-256 or, with `secret`, an HMAC over both), written
    with one SET, so a reader sees all of it or nothing; with a secret, a writer
    without it cannot make an entry this tier accepts. Guarantees: short socket timeouts and no retries inside a call; after
    a failure the tier fails fast (TierUnavailable) for a growing back-off, then
    tries again, so it reconnects by itself when Redis returns. A record that
    fails its check is deleted and reported as a miss. Thread-safe (redis-py's
    connection pool). Eviction is Redis's: the TTL, and its maxmemory policy.
    """

    name = "redis"
    blocking = True

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        timeout_s: float = 0.5,
        lock_ttl_s: float = 30.0,
        secret: bytes | None = None,
    ) -> None:
        self.ttl_ms = int(ttl_s * 1000)
        self.secret = secret
        self.lock_ttl_s = lock_ttl_s
        self.prefix = f"zimage:v{SCHEMA_VERSION}:"
        self.corrupt_dropped = 0
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = BACKOFF_START_S

    def redis_key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}{namespace}:{key}"

    def get(self, namespace: str, key: str) -> Entry | _Miss:
        name = self.redis_key(namespace, key)
        blob = self._call(lambda r: r.get(name))
        if blob is None:
            return MISS
        try:
            return decode_record(blob, namespace, key, self.secret)
        except UnverifiableEntry:
            return MISS  # another replica's, signed with a secret this one lacks
        except CorruptEntry as exc:
            log.warning("redis cache: dropping corrupt entry %s (%s)", name, exc)
            self.corrupt_dropped += 1
            self._call(lambda r: r.delete(name))
            return MISS

    def put(self, namespace: str, key: str, entry: Entry) -> None:
        record = encode_record(namespace, key, entry, self.secret)
        self._call(lambda r: r.set(self.redis_key(namespace, key), record, px=self.ttl_ms))

    def discard(self, namespace: str, key: str) -> None:
        self._call(lambda r: r.delete(self.redis_key(namespace, key)))

    def clear(self, namespace: str) -> int:
        """Delete every entry of `namespace` (SCAN + DEL in batches); returns how many."""

        def run(r: redis.Redis) -> int:
            removed, batch = 0, []
            for name in r.scan_iter(match=f"{self.prefix}{namespace}:*", count=1000):
                if not name.endswith(b":lock"):
                    batch.append(name)
                if len(batch) >= 500:
                    removed += r.delete(*batch)
                    batch = []
            return removed + (r.delete(*batch) if batch else 0)

        return self._call(run)

    def stats(self) -> dict[str, int]:
        """Entries and bytes under our prefix (a SCAN: cheap for a cache-sized Redis)."""

        def count(r: redis.Redis) -> dict[str, int]:
            entries = size = 0
            names = []
            for name in r.scan_iter(match=f"{self.prefix}*", count=1000):
                if name.endswith(b":lock"):
                    continue
                names.append(name)
                if len(names) >= SCAN_LIMIT:
                    break
            pipe = r.pipeline(transaction=False)
            for name in names:
                pipe.strlen(name)
            for length in pipe.execute():
                if length:
                    entries += 1
                    size += length
            return {"entries": entries, "bytes": size}

        return self._call(count)

    def try_lock(self, namespace: str, key: str) -> Lease | None:
        """Take the generation lock for this entry (SET NX PX with a random token), or None
        if another replica holds it. A lock key that never expires (no TTL, whatever its
        type) was not written by a replica, whose locks always expire: it is ignored, and
        the lease returned holds nothing, so the caller generates at once instead of
        waiting forever. Raises TierUnavailable when Redis is unreachable."""
        name = self.redis_key(namespace, key) + ":lock"
        lock = Lock(self._client, name, timeout=self.lock_ttl_s, blocking=False, thread_local=False)
        if self._call(lambda _: lock.acquire()):
            return Lease(self, lock)
        if self._call(lambda r: r.pttl(name)) == -1:
            log.warning("redis: ignoring %s: a lock key without a TTL was not set by a replica", name)
            return Lease(self, None)
        return None

    def lock_held(self, namespace: str, key: str) -> bool:
        name = self.redis_key(namespace, key) + ":lock"
        return bool(self._call(lambda r: r.exists(name)))

    def _call(self, op: Callable[[redis.Redis], T]) -> T:
        with self._lock:
            wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise TierUnavailable(f"redis unavailable; next try in {wait:.1f} s", counted=False)
        try:
            result = op(self._client)
        except redis.exceptions.LockError:
            raise  # a lock that expired under its holder: not an outage
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            with self._lock:
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            raise TierUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:  # e.g. OOM under a noeviction policy
            raise TierUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            self._backoff = BACKOFF_START_S
        return result


class Lease:
    """A held generation lock. The token check (redis-py's Lua scripts) means only
    the holder can refresh or release it; if the holder dies, it expires. A lease
    on no lock (`lock` None) is what generating without single flight holds."""

    def __init__(self, tier: RedisTier, lock: Lock | None) -> None:
        self._tier, self._lock = tier, lock
        self.refresh_every_s = tier.lock_ttl_s / 3

    def refresh(self) -> bool:
        """Reset the TTL; False if the lock was lost (expired, or Redis unreachable)."""
        lock = self._lock
        if lock is None:
            return True
        try:
            return bool(self._tier._call(lambda _: lock.extend(self._tier.lock_ttl_s, replace_ttl=True)))
        except (TierUnavailable, redis.exceptions.LockError):
            return False

    def release(self) -> None:
        lock = self._lock
        if lock is None:
            return
        try:
            self._tier._call(lambda _: lock.release())
        except (TierUnavailable, redis.exceptions.LockError) as exc:
            log.debug("generation lock not released (it will expire): %s", exc)
