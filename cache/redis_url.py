"""Where the Redis tier lives: one server, a Sentinel-watched master, or a Cluster, by URL.

Three forms, each built with redis-py's own client for it, in a blocking and an
asyncio flavour (the tier uses both):

- `redis://[[user]:password@]host:port[/db]`, `rediss://...`, `unix:///path?db=N`:
  one server (`redis.Redis.from_url`).
- `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`: the
  master Sentinel names `service`, found through any of the listed sentinels and
  found again after a failover (`redis.sentinel.Sentinel.master_for`). The
  password is the master's; `?sentinel_password=...` gives the sentinels' own.
- `redis+cluster://[[user]:password@]host:port[,host:port...]`: a Redis Cluster,
  any of its nodes as the starting point (`redis.cluster.RedisCluster`). A cluster
  has only database 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME, CLUSTER_SCHEME = "redis+sentinel", "redis+cluster"
EXAMPLES = (
    "redis://host:6379/0, redis+sentinel://host1:26379,host2:26379/mymaster[/db] "
    "or redis+cluster://host1:6379,host2:6379"
)


HIDDEN = "***"
BAD_FORM = "not a valid URL: check the host and port, and percent-encode / ? # @ in a password"
# A query parameter whose name holds "password" (`password=`, `sentinel_password=`).
_SECRET_PARAM = re.compile(r"(?i)([?&][^=&#]*password[^=&#]*=)[^&#]*")


def redact_url(url: str) -> str:
    """`url` with its secrets replaced by `***`, for any message that shows it: the
    user information (`user:password@`) and every `*password*=` parameter.

    Works on any text, a malformed URL included (no parsing that could fail): what
    lies between `://` and the last `@` before the path is user information.
    """
    shown = _SECRET_PARAM.sub(rf"\g<1>{HIDDEN}", url)
    scheme, sep, rest = shown.partition("://")
    if not sep:
        return shown
    # The authority ends at the first / ? # after the user information, whose
    # password may itself hold any of them: so take the last @ of the whole rest.
    at = rest.rfind("@")
    if at < 0:
        return shown
    return f"{scheme}://{HIDDEN}@{rest[at + 1 :]}"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL; `client()` and `async_client()` build a fresh client for it."""

    kind: Literal["single", "sentinel", "cluster"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels, or cluster start-up nodes
    service: str = ""  # the Sentinel master name
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> Any:
        """A blocking client (`redis.Redis` or `redis.cluster.RedisCluster`); connects lazily."""
        import redis
        from redis.cluster import ClusterNode, RedisCluster
        from redis.sentinel import Sentinel

        return self._build(redis.Redis, RedisCluster, ClusterNode, Sentinel, kwargs)

    def async_client(self, **kwargs: Any) -> Any:
        """The same as `client`, from `redis.asyncio`: bound to the event loop that first uses it."""
        import redis.asyncio as aredis
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.sentinel import Sentinel

        return self._build(aredis.Redis, RedisCluster, ClusterNode, Sentinel, kwargs)

    def _build(self, single: Any, cluster: Any, node: Any, sentinel: Any, kwargs: dict[str, Any]) -> Any:
        """A client of one flavour (blocking or asyncio: redis-py's classes of that flavour)."""
        if self.kind == "single":
            return single.from_url(self.url, **kwargs)
        auth = {"username": self.username, "password": self.password}
        if self.kind == "cluster":
            return cluster(startup_nodes=[node(host, port) for host, port in self.nodes], **auth, **kwargs)
        watcher = sentinel(list(self.nodes), sentinel_kwargs=self._sentinel_kwargs(kwargs), **kwargs)
        return watcher.master_for(self.service, db=self.db, **auth)

    def _sentinel_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # The sentinels get the same short timeouts as the data connections, so a
        # dead sentinel costs one timeout, then the next one in the list is asked.
        keep = ("socket_timeout", "socket_connect_timeout")
        out: dict[str, Any] = {k: v for k, v in kwargs.items() if k in keep}
        if self.sentinel_password:
            out["password"] = self.sentinel_password
        return out


def parse_redis_url(url: str) -> RedisTarget:
    """Parse and check a Redis URL; raises ValueError saying what is wrong and what to
    write, the URL shown with its secrets hidden (`redact_url`)."""
    shown = redact_url(url)
    try:
        return _parse(url, shown)
    except ValueError as exc:
        # Belt and braces: no message may carry a secret, whoever wrote it.
        message = str(exc)
        target = _parse_secrets(url)
        for secret in target:
            message = message.replace(secret, HIDDEN)
        raise ValueError(message) from None
    except Exception:  # urlsplit and redis-py can fail on odd input in their own ways
        raise ValueError(f"{shown!r}: {BAD_FORM}; write e.g. {EXAMPLES}") from None


def _parse_secrets(url: str) -> list[str]:
    """Every substring of `url` that may be a secret (user information, password values),
    longest first, so that hiding them in a message leaves nothing of them."""
    found = [m.group(0).split("=", 1)[1] for m in _SECRET_PARAM.finditer(url)]
    _, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest[: rest.rfind("@")]
        found += [userinfo, *userinfo.split(":", 1)]
    return sorted({s for s in found if len(s) >= 2}, key=len, reverse=True)


def _parse(url: str, shown: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(f"{shown!r} is not a Redis URL; write e.g. {EXAMPLES}")
    scheme = scheme.lower()
    if scheme in SINGLE_SCHEMES:
        from redis.connection import parse_url

        try:
            options = parse_url(url)
        except ValueError as exc:
            # redis-py's own messages name no value; urllib's quote parts of the URL.
            said = str(exc) if str(exc).startswith(("Invalid value for", "Redis URL must")) else BAD_FORM
            raise ValueError(f"{shown!r}: {said}") from None
        if scheme != "unix":
            # redis-py ignores a path that is not a number (`/abc` would be database 0).
            db_path = urlsplit(url).path.strip("/")
            if db_path and not db_path.isdigit():
                raise ValueError(f"{shown!r}: the database (after host:port) is not a number; write e.g. /0")
        return RedisTarget("single", url, db=int(options.get("db") or 0))
    if scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        raise ValueError(
            f"{shown!r}: unknown scheme {scheme!r}; use redis, rediss, unix, {SENTINEL_SCHEME} "
            f"or {CLUSTER_SCHEME}, e.g. {EXAMPLES}"
        )
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    nodes = tuple(_host_port(shown, n, item) for n, item in enumerate(hosts.split(","), 1))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = [p for p in parts.path.split("/") if p]
    if scheme == CLUSTER_SCHEME:
        unknown = sorted(query)
        if unknown:
            raise ValueError(f"{shown!r}: unknown option(s) {', '.join(unknown)} for a cluster URL")
        if path not in ([], ["0"]):
            raise ValueError(f"{shown!r}: a Redis Cluster has only database 0; drop the path after host:port")
        return RedisTarget("cluster", url, nodes, username=username, password=password)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise ValueError(
            f"{shown!r}: unknown option(s) {', '.join(unknown)}; only sentinel_password is known"
        )
    if not path or len(path) > 2:
        raise ValueError(
            f"{shown!r} names no master: write {SENTINEL_SCHEME}://host:26379[,host:26379...]/MASTER_NAME[/db], "
            "MASTER_NAME as in the sentinels' `sentinel monitor` line"
        )
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"{shown!r}: the database (after the master name) is not a number")
        db = int(path[1])
    return RedisTarget(
        "sentinel",
        url,
        nodes,
        service=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password"),
    )


def _host_port(shown: str, n: int, item: str) -> tuple[str, int]:
    # The messages name the node by its place, not its text: a malformed URL's
    # password can end up in any part of it.
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{shown!r}: node {n} is not host:port; every node needs its port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{shown!r}: the port of node {n} is not a TCP port (1-65535)")
    return host.strip("[]"), int(port)
