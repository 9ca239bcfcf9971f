"""Real Redis topologies on free loopback ports, for the tests: a Sentinel-watched master
with a replica, and a three-node Redis Cluster. Each process runs in the foreground in
a directory of its own and is killed at `stop()`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import redis
from typing_extensions import Self  # typing's is 3.11's; pyproject allows 3.10

from bench.procs import free_port, kill_process, redis_server_args, wait_until

MASTER_NAME = "zimage"


def _spawn(workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "out.log", "wb") as log:
        return subprocess.Popen(["redis-server", *args], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)


def _wait(what: str, condition: Callable[[], object], timeout_s: float = 30) -> None:
    wait_until(lambda: bool(condition()), what, timeout_s=timeout_s, retry_on=(redis.RedisError,))


class _Group:
    """Redis processes started together: all of them or none."""

    procs: list[subprocess.Popen[bytes]]

    def start(self) -> Self:
        """Start every process and wait until they work together; on failure none is left."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in self.procs:
            kill_process(proc)


class SentinelGroup(_Group):
    """A master, one replica of it, and `sentinels` sentinels watching it as MASTER_NAME."""

    def __init__(self, workdir: Path, sentinels: int = 3) -> None:
        self.workdir = workdir
        self.ports = {"master": free_port(), "replica": free_port()}
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/{MASTER_NAME}"

    def _start(self) -> None:
        master, replica = self.ports["master"], self.ports["replica"]
        self.procs.append(_spawn(self.workdir / "master", *redis_server_args(master)))
        self.procs.append(
            _spawn(
                self.workdir / "replica", *redis_server_args(replica), "--replicaof", "127.0.0.1", str(master)
            )
        )
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}" / "sentinel.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            self.procs.append(_spawn(conf.parent, str(conf), "--sentinel"))
        _wait(
            "the replica to sync",
            lambda: self.node(replica).info("replication")["master_link_status"] == "up",
        )
        for port in self.sentinel_ports:
            _wait("the sentinels", lambda port=port: self.sentinel(port).sentinel_master(MASTER_NAME))

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def master_port(self) -> int:
        _host, port = self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def failover(self, timeout_s: float = 30) -> int:
        """`SENTINEL FAILOVER`: the replica becomes master; returns its port once it takes writes."""
        old = self.master_port()
        sentinel = self.sentinel(self.sentinel_ports[0])
        # The sentinels promote only a replica they see in sync (they learn of it, and
        # of a demoted master's new link, from INFO every few seconds).
        _wait(
            "a replica the sentinels can promote",
            lambda: any(
                r.get("is_slave") and not r.get("is_sdown") and r.get("master-link-status") == "ok"
                for r in sentinel.sentinel_slaves(MASTER_NAME)
            ),
            timeout_s,
        )
        sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        _wait("the failover", lambda: self.master_port() != old, timeout_s)
        new = self.master_port()
        _wait("the new master", lambda: self.node(new).info("replication")["role"] == "master", timeout_s)
        return new

    def wait_demoted(self, port: int, timeout_s: float = 30) -> None:
        """Wait until the sentinels have made the old master at `port` a replica (they
        notice it claiming the master role at their next INFO, up to 10 s later). Until
        then it takes writes from clients that have not noticed the failover, and those
        writes are lost when it resynchronises from the new master."""
        _wait(
            "the old master to step down",
            lambda: self.node(port).info("replication")["role"] == "slave",
            timeout_s,
        )


class ClusterGroup(_Group):
    """Three masters (no replicas) forming one Redis Cluster over all 16384 slots."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports: list[int] = []
        while len(self.ports) < 3:  # each node also listens on port + 10000 (the cluster bus)
            port = free_port()
            if port < 55000 and port not in self.ports:
                self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start(self) -> None:
        """Start the nodes and join them into one cluster."""
        for port in self.ports:
            self.procs.append(
                _spawn(
                    self.workdir / str(port),
                    *redis_server_args(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                )
            )
        for port in self.ports:
            _wait("the cluster nodes", lambda port=port: redis.Redis("127.0.0.1", port).ping())
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            _wait(
                "the cluster to agree",
                lambda port=port: redis.Redis("127.0.0.1", port).cluster("info")["cluster_state"] == "ok",
            )
