"""L3: a Redis shared by replicas, with TTLs, plus the cross-replica generation lock.

One concept with its lock: entries and locks share one client, one URL and one
back-off, which is why this module runs a little past 300 lines."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import redis
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, RedisClusterException
from redis.lock import Lock
from redis.retry import Retry

from cache.entry import (
    MISS,
    UNSIGNED,
    CorruptEntry,
    Entry,
    UnverifiableEntry,
    _Miss,
    decode_record,
    encode_record,
)
from cache.keyring import Keyring
from cache.keys import SCHEMA_VERSION
from cache.layered import TierUnavailable
from cache.redis_url import parse_redis_url
from cache.sentinel_watch import FailoverWatch

log = logging.getLogger(__name__)

T = TypeVar("T")
# After a failure, calls fail fast for this long (doubling up to the maximum)
# instead of each request paying a connect timeout while Redis is down.
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 5.0
SCAN_LIMIT = 200_000
# How many foreign lock keys are remembered as logged (so each is logged once).
FOREIGN_LOGGED = 1024
# A record's checksum (XXH3: 0.04 ms for 3 MB) is checked on the event loop. Its
# HMAC-SHA256, with a cache secret, is too up to this size; a larger record (a
# 1024x1024 PNG is 1.5-3 MB, about 1.5 ms of hashing) on a thread, so that one big
# hit does not hold up every other request on the loop.
INLINE_HMAC_MAX_BYTES = 1 << 20
# Errors that mean "Redis (or the way to it) is down": back off. Any other Redis
# error (e.g. OOM under a noeviction policy) fails that call only.
OUTAGES = (redis.ConnectionError, redis.TimeoutError, RedisClusterException, ClusterError)


class RedisTier:
    """Entries as Redis strings `zimage:v<schema>:<kid>:<namespace>:<key>` with a TTL.

    The value is the same checked record as on disk (header with key, size, encoding
    and key id, the bytes, then an XXH3 checksum or, with a `keyring`, an HMAC over
    both), written with one SET, so a reader sees all of it or nothing; with a
    secret, a writer without it cannot make an entry this tier accepts. `<kid>` is
    the key id of the secret that signed it (cache.keyring; `unsigned` without one):
    writes go under the keyring's first, reads try each of its key ids in turn, so
    replicas with different secrets on one Redis never read, delete or overwrite
    each other's entries, and a rotated-in secret still reads the old one's.
    `url` is one server, a Sentinel-watched master or a Cluster (cache.redis_url); no command touches two keys but the DEL of `clear`, which
    redis-py's cluster client splits by slot, so entries and locks need not share
    a slot. Guarantees: short socket timeouts and no retries inside a call; after
    a failure the tier fails fast (TierUnavailable) for a growing back-off, then
    tries again, so it reconnects by itself when Redis returns; with Sentinel it
    also listens for failovers (cache.sentinel_watch) and moves to the new master
    as soon as the sentinels announce it. A record that fails its check is deleted and
    reported as a miss. Two APIs over one back-off: the blocking one is
    thread-safe (redis-py's connection pool); `aget` runs on the caller's event
    loop with `redis.asyncio` (one client per loop), so a hit needs no thread.
    Eviction is Redis's: the TTL, and its maxmemory policy.
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
        keyring: Keyring = UNSIGNED,
    ) -> None:
        self.ttl_ms = int(ttl_s * 1000)
        self.keyring = keyring
        self.lock_ttl_s = lock_ttl_s
        self.prefix = f"zimage:v{SCHEMA_VERSION}:"
        self.target = parse_redis_url(url)
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "health_check_interval": 30,
        }
        # Built on first use: a cluster client connects when it is made, and a
        # replica must start (and serve from its other tiers) with Redis down.
        self._client: Any = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        # Foreign lock keys already logged (most recent last), so each is logged once.
        self._foreign_logged: OrderedDict[str, None] = OrderedDict()
        self._retry_at = 0.0
        self._backoff = BACKOFF_START_S
        # Sentinel: how many failovers were heard; each loop's client catches up on its next call.
        self._failovers = 0
        self._async_seen: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
            weakref.WeakKeyDictionary()
        )
        self._watch = None
        if self.target.kind == "sentinel":
            self._watch = FailoverWatch(self.target, self._follow_failover, timeout_s=timeout_s).start()

    def redis_key(self, namespace: str, key: str, kid: str | None = None) -> str:
        """The Redis key of an entry under `kid` (default: the one this tier writes)."""
        return f"{self.prefix}{kid or self.keyring.kid}:{namespace}:{key}"

    def get(self, namespace: str, key: str) -> Entry | _Miss:
        for kid in self.keyring.kids:
            name = self.redis_key(namespace, key, kid)
            blob = self._call(lambda r, name=name: r.get(name))
            if blob is None:
                continue
            try:
                return decode_record(blob, namespace, key, self.keyring, stored_kid=kid)
            except UnverifiableEntry:
                continue
            except CorruptEntry as exc:
                self._drop_corrupt(name, exc)
                self._call(lambda r, name=name: r.delete(name))
        return MISS

    async def aget(self, namespace: str, key: str) -> Entry | _Miss:
        """`get` on the running event loop: the GET through `redis.asyncio`, the check
        inline (a large signed record's on a thread: INLINE_HMAC_MAX_BYTES). Same failures."""
        for kid in self.keyring.kids:
            name = self.redis_key(namespace, key, kid)
            blob = await self._acall(lambda r, name=name: r.get(name))
            if blob is None:
                continue
            try:
                if self.keyring.signed and len(blob) > INLINE_HMAC_MAX_BYTES:
                    return await asyncio.to_thread(
                        partial(decode_record, blob, namespace, key, self.keyring, stored_kid=kid)
                    )
                return decode_record(blob, namespace, key, self.keyring, stored_kid=kid)
            except UnverifiableEntry:
                continue
            except CorruptEntry as exc:
                self._drop_corrupt(name, exc)
                await self._acall(lambda r, name=name: r.delete(name))
        return MISS

    def _drop_corrupt(self, name: str, exc: CorruptEntry) -> None:
        log.warning("redis cache: dropping corrupt entry %s (%s)", name, exc)

    def put(self, namespace: str, key: str, entry: Entry) -> None:
        record = encode_record(namespace, key, entry, self.keyring)
        self._call(lambda r: r.set(self.redis_key(namespace, key), record, px=self.ttl_ms))

    def discard(self, namespace: str, key: str) -> None:
        names = [self.redis_key(namespace, key, kid) for kid in self.keyring.kids]
        self._call(lambda r: [r.delete(name) for name in names])

    def clear(self, namespace: str) -> int:
        """Delete every entry of `namespace` under this tier's key ids (SCAN + DEL in
        batches); returns how many. Other secrets' entries are theirs to clear."""

        def run(r: Any) -> int:
            removed, batch = 0, []
            for kid in self.keyring.kids:
                for name in r.scan_iter(match=f"{self.prefix}{kid}:{namespace}:*", count=1000):
                    if not name.endswith(b":lock"):
                        batch.append(name)
                    if len(batch) >= 500:
                        removed += r.delete(*batch)
                        batch = []
            return removed + (r.delete(*batch) if batch else 0)

        return self._call(run)

    def stats(self) -> dict[str, int]:
        """Entries and bytes under our prefix and key ids (a SCAN: cheap for a cache-sized Redis)."""

        def count(r: Any) -> dict[str, int]:
            entries = size = 0
            names = []
            for kid in self.keyring.kids:
                for name in r.scan_iter(match=f"{self.prefix}{kid}:*", count=1000):
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
        if another replica holds it. Raises TierUnavailable when Redis is unreachable.

        A replica's lock is a string that never has more than `lock_ttl_s` left (it
        is set, and refreshed, with that TTL). A lock key with more time left, none
        at all, or of another type was not written by a replica (planted, or left by
        hand): it is ignored, logged once per key, and the lease returned holds
        nothing, so the caller generates at once instead of waiting on it."""
        name = self.redis_key(namespace, key) + ":lock"

        def take(r: Any) -> Lock | None:
            lock = Lock(r, name, timeout=self.lock_ttl_s, blocking=False, thread_local=False)
            return lock if lock.acquire() else None

        def inspect(r: Any) -> tuple[int, Any]:
            pipe = r.pipeline(transaction=False)
            pipe.pttl(name)
            pipe.type(name)
            left, kind = pipe.execute()
            return left, kind

        lock = self._call(take)
        if lock is not None:
            return Lease(self, lock)
        left_ms, kind = self._call(inspect)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if left_ms == -2:  # gone between the two calls: released; the caller looks again
            return None
        # Slack for clock granularity only: a replica sets exactly lock_ttl_s.
        foreign = kind != "string" or left_ms == -1 or left_ms > self.lock_ttl_s * 1000 + 1000
        if not foreign:
            return None
        with self._lock:
            first = name not in self._foreign_logged
            self._foreign_logged[name] = None
            self._foreign_logged.move_to_end(name)
            while len(self._foreign_logged) > FOREIGN_LOGGED:
                self._foreign_logged.popitem(last=False)
        if first:
            left = "no TTL" if left_ms == -1 else f"{left_ms / 1000:.0f} s left"
            log.warning(
                "redis: ignoring lock key %s (a %s, %s): no replica sets one like it "
                "(a string with at most %.0f s left)",
                name,
                kind,
                left,
                self.lock_ttl_s,
            )
        return Lease(self, None)

    def lock_held(self, namespace: str, key: str) -> bool:
        name = self.redis_key(namespace, key) + ":lock"
        return bool(self._call(lambda r: r.exists(name)))

    def _call(self, op: Callable[[Any], T]) -> T:
        self._check_backoff()
        try:
            if self._client is None:
                with self._lock:
                    if self._client is None:
                        retry = Retry(NoBackoff(), 0)
                        self._client = self.target.client(retry=retry, **self._options)
            result = op(self._client)
        except redis.exceptions.LockError:
            raise  # a lock that expired under its holder: not an outage
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._failed(exc) from exc
        self._succeeded()
        return result

    async def _acall(self, op: Callable[[Any], Awaitable[T]]) -> T:
        self._check_backoff()
        try:
            loop = asyncio.get_running_loop()
            client = self._async_clients.get(loop)
            if client is None:
                for closed in [old for old in self._async_clients if old.is_closed()]:
                    del self._async_clients[closed]  # its client holds it: not freed by itself
                retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
                client = self._async_clients[loop] = self.target.async_client(retry=retry, **self._options)
                self._async_seen[loop] = self._failovers
            elif self._async_seen.get(loop) != self._failovers:
                self._async_seen[loop] = self._failovers
                await client.connection_pool.get_master_address()
            result = await op(client)
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._failed(exc) from exc
        self._succeeded()
        return result

    def close(self) -> None:
        """Stop listening to the sentinels and close the blocking client's connections
        (the event loops' clients close with their loops)."""
        if self._watch is not None:
            self._watch.stop()
        if self._client is not None:
            self._client.close()

    def _follow_failover(self) -> None:
        """The sentinels moved the master: ask them for it now, so idle connections to
        the old one close and busy ones close when they come back to the pool."""
        with self._lock:
            self._failovers += 1
            self._retry_at = 0.0  # the new master may be up while we were backing off
            client = self._client
        if client is not None:
            try:
                client.connection_pool.get_master_address()
            except redis.RedisError as exc:  # the next call finds it, or backs off
                log.debug("redis: new master not found yet: %s", exc)

    def _check_backoff(self) -> None:
        with self._lock:
            wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise TierUnavailable(f"redis unavailable; next try in {wait:.1f} s", counted=False)

    def _failed(self, exc: Exception) -> TierUnavailable:
        """What a failed call raises; an outage also starts (or grows) the back-off."""
        if isinstance(exc, OUTAGES):
            with self._lock:
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        return TierUnavailable(f"redis: {type(exc).__name__}: {exc}")

    def _succeeded(self) -> None:
        with self._lock:
            self._backoff = BACKOFF_START_S


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
