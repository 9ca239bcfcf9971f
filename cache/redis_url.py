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

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME, CLUSTER_SCHEME = "redis+sentinel", "redis+cluster"
EXAMPLES = (
    "redis://host:6379/0, redis+sentinel://host1:26379,host2:26379/mymaster[/db] "
    "or redis+cluster://host1:6379,host2:6379"
)


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

        if self.kind == "single":
            return redis.Redis.from_url(self.url, **kwargs)
        auth = {"username": self.username, "password": self.password}
        if self.kind == "cluster":
            nodes = [ClusterNode(host, port) for host, port in self.nodes]
            return RedisCluster(startup_nodes=nodes, **auth, **kwargs)
        sentinel = Sentinel(list(self.nodes), sentinel_kwargs=self._sentinel_kwargs(kwargs), **kwargs)
        return sentinel.master_for(self.service, db=self.db, **auth)

    def async_client(self, **kwargs: Any) -> Any:
        """The same as `client`, from `redis.asyncio`: bound to the event loop that first uses it."""
        import redis.asyncio as aredis
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.sentinel import Sentinel

        if self.kind == "single":
            return aredis.Redis.from_url(self.url, **kwargs)
        auth = {"username": self.username, "password": self.password}
        if self.kind == "cluster":
            nodes = [ClusterNode(host, port) for host, port in self.nodes]
            return RedisCluster(startup_nodes=nodes, **auth, **kwargs)
        sentinel = Sentinel(list(self.nodes), sentinel_kwargs=self._sentinel_kwargs(kwargs), **kwargs)
        return sentinel.master_for(self.service, db=self.db, **auth)

    def _sentinel_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # The sentinels get the same short timeouts as the data connections, so a
        # dead sentinel costs one timeout, then the next one in the list is asked.
        keep = ("socket_timeout", "socket_connect_timeout")
        out: dict[str, Any] = {k: v for k, v in kwargs.items() if k in keep}
        if self.sentinel_password:
            out["password"] = self.sentinel_password
        return out


def parse_redis_url(url: str) -> RedisTarget:
    """Parse and check a Redis URL; raises ValueError saying what is wrong and what to write."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(f"{url!r} is not a Redis URL; write e.g. {EXAMPLES}")
    scheme = scheme.lower()
    if scheme in SINGLE_SCHEMES:
        from redis.connection import parse_url

        try:
            options = parse_url(url)
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from None
        return RedisTarget("single", url, db=int(options.get("db") or 0))
    if scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        raise ValueError(
            f"{url!r}: unknown scheme {scheme!r}; use redis, rediss, unix, {SENTINEL_SCHEME} "
            f"or {CLUSTER_SCHEME}, e.g. {EXAMPLES}"
        )
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    nodes = tuple(_host_port(url, item) for item in hosts.split(","))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = [p for p in parts.path.split("/") if p]
    if scheme == CLUSTER_SCHEME:
        unknown = sorted(query)
        if unknown:
            raise ValueError(f"{url!r}: unknown option(s) {', '.join(unknown)} for a cluster URL")
        if path not in ([], ["0"]):
            raise ValueError(f"{url!r}: a Redis Cluster has only database 0; drop {parts.path!r}")
        return RedisTarget("cluster", url, nodes, username=username, password=password)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"{url!r}: unknown option(s) {', '.join(unknown)}; only sentinel_password is known")
    if not path or len(path) > 2:
        raise ValueError(
            f"{url!r} names no master: write {SENTINEL_SCHEME}://host:26379[,host:26379...]/MASTER_NAME[/db], "
            "MASTER_NAME as in the sentinels' `sentinel monitor` line"
        )
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"{url!r}: database {path[1]!r} is not a number")
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


def _host_port(url: str, item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{url!r}: {item!r} is not host:port; every node needs its port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{url!r}: port {port!r} of {item!r} is not a TCP port (1-65535)")
    return host.strip("[]"), int(port)
