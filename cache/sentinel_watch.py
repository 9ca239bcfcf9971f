"""Hear of a Sentinel failover when it happens, not at the next failed write."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from cache.redis_url import RedisTarget

log = logging.getLogger(__name__)

BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 5.0


class FailoverWatch:
    """A daemon thread subscribed to `+switch-master` on the sentinels of a
    `redis+sentinel://` URL; calls `on_switch()` when they move the watched master.

    Why: redis-py asks the sentinels for the master again only when a connection
    fails. After a planned failover (`SENTINEL FAILOVER`) the old master stays up
    and keeps taking writes until the sentinels demote it, up to about 10 s later,
    and those writes are lost when it resynchronises from the new master. Heard at
    once, the failover moves the writes within a second. Guarantees: never raises
    into the caller; listens to one sentinel at a time, moving to the next when it
    fails (with a back-off of 0.5 s doubling to 5 s once all have failed); a
    daemon thread, so it never holds up the process's exit.
    """

    def __init__(self, target: RedisTarget, on_switch: Callable[[], None], *, timeout_s: float) -> None:
        assert target.kind == "sentinel"
        self.target = target
        self.on_switch = on_switch
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sentinel-watch", daemon=True)

    def start(self) -> FailoverWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            for host, port in self.target.nodes:
                if self._listen(host, port):
                    backoff = BACKOFF_START_S
                if self._stop.is_set():
                    return
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _listen(self, host: str, port: int) -> bool:
        """Follow one sentinel's failover announcements until it fails; True if it answered."""
        client = redis.Redis(
            host=host,
            port=port,
            password=self.target.sentinel_password,
            socket_connect_timeout=self.timeout_s,
            socket_timeout=max(self.timeout_s, 5.0),
            health_check_interval=10,  # a sentinel that vanished is noticed by a PING
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        answered = False
        try:
            pubsub.subscribe("+switch-master")
            answered = True
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                # "<master name> <old ip> <old port> <new ip> <new port>"
                fields = message["data"].decode(errors="replace").split()
                if fields and fields[0] == self.target.service:
                    log.warning(
                        "redis: the sentinels moved master %s to %s", fields[0], " ".join(fields[3:5])
                    )
                    try:
                        self.on_switch()
                    except Exception:
                        log.exception("redis: failed to follow the failover; the next error will")
        except redis.RedisError as exc:
            log.debug("sentinel %s:%d: %s", host, port, exc)
        finally:
            pubsub.close()
            client.close()
        return answered
