"""What one replica indexes, the others find: a Redis stream per model and namespace."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cache.keys import SCHEMA_VERSION
from cache.redis_url import parse_redis_url
from similarity.journal import Record

# The newest this many prompts per namespace are kept in the stream (older ones are
# still in each replica's journal); XADD trims approximately, which is cheap.
STREAM_LENGTH = 200_000
READ_BATCH = 2000
BACKOFF_S = 5.0


class SharedPrompts:
    """Each stored prompt is XADDed to `zimage:v<schema>:similar:<embedder>:<scope>/<namespace>`
    with its key and vector; every replica reads the stream of a namespace from
    where it stopped before each search in it, so a prompt stored on one replica
    is suggested on the others at their next request. Only the asking
    namespace's stream is read: what other namespaces hold changes nothing
    here, not even the time a request takes.

    Failure: any Redis error raises (`redis.RedisError` or OSError) for the caller
    to log; after one, `available` is False for BACKOFF_S so a dead Redis costs
    one timeout per few seconds, not one per request. Thread-safe (redis-py's pool).
    """

    def __init__(self, url: str, model: str, dim: int, *, timeout_s: float = 0.5) -> None:
        self.prefix = f"zimage:v{SCHEMA_VERSION}:similar:{model}:"
        self.dim = dim
        self._client: Any = parse_redis_url(url).client(
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._retry_at

    def publish(self, space: str, record: Record) -> None:
        fields = {"k": record.key, "p": record.prompt, "v": np.asarray(record.vector, "<f4").tobytes()}
        self._guard(
            lambda: self._client.xadd(self.prefix + space, fields, maxlen=STREAM_LENGTH, approximate=True)
        )

    def read(self, space: str, after: str) -> tuple[list[Record], str]:
        """The records of `space` (scope/namespace) published after stream id `after`
        ("0" for all), and the last id read."""
        records: list[Record] = []
        while True:
            found = self._guard(
                lambda a=after: self._client.xread({self.prefix + space: a}, count=READ_BATCH)
            )
            items = found[0][1] if found else []
            for item_id, fields in items:
                after = item_id.decode() if isinstance(item_id, bytes) else item_id
                vector = np.frombuffer(fields[b"v"], dtype="<f4")
                if vector.size == self.dim:  # anything else was not written by us: skipped
                    records.append(
                        Record(fields[b"k"].decode(), fields[b"p"].decode(), vector.astype(np.float32))
                    )
            if len(items) < READ_BATCH:
                return records, after

    def close(self) -> None:
        self._client.close()

    def _guard(self, call: Any) -> Any:
        try:
            return call()
        except Exception:
            self._retry_at = time.monotonic() + BACKOFF_S
            raise
