"""Real processes on free ports, for the tests and the benchmarks: the server
(`python app.py`) and a `redis-server`, and the one way to wait for a process
to be ready (`wait_until`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120


class NotReady(RuntimeError):
    """A process did not become ready in time, or exited while starting."""


def wait_until(
    ready: Callable[[], bool],
    what: str,
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
    exited: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll `ready()` every `interval_s` until it is true. An exception of `retry_on`
    from it means "not yet"; `exited()` returning a message means the process died,
    which raises NotReady with that message at once rather than at the deadline.
    Raises NotReady naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except retry_on:
            pass
        if (why := exited()) is not None:
            raise NotReady(f"{what}: {why}")
        if time.monotonic() > deadline:
            raise NotReady(f"{what}: not ready after {timeout_s} s")
        time.sleep(interval_s)


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 30) -> None:
    """SIGTERM, and SIGKILL if it has not exited after `grace_s`; returns once it has
    exited. Nothing if it already had."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_process(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL (a crash, or a process with nothing to save); returns once it has exited."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def redis_server_args(port: int) -> list[str]:
    """`redis-server` on loopback `port`, without persistence (what tests and benchmarks run)."""
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` in a subprocess, with its own port and cache directory, run
    from the repository root; `launcher` goes between the interpreter and app.py
    (e.g. `-m tests.faults`, which injects faults and then runs app.py)."""

    def __init__(
        self,
        cache_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.cache_dir = cache_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cache_dir.parent / f"server-{self.port}.log"
        cmd = [sys.executable, *launcher, "app.py", "--port", str(self.port), "--cache-dir", str(cache_dir)]
        cmd += args
        # The tiny model, warmed at one small size: a start costs what loading costs. Near-
        # repeats off unless asked for: their model costs seconds of CPU on a first miss.
        defaults = {
            "ZIMAGE_MODEL": "tiny",
            "ZIMAGE_WARMUP_SIZES": "256x256",
            "ZIMAGE_SIMILAR_PROMPTS": "false",
        }
        full_env = {**os.environ, **defaults, **(env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> Server:
        return self.wait_model("ready", timeout_s)

    def wait_model(self, state: str, timeout_s: float = START_TIMEOUT_S) -> Server:
        """Wait until /health reports the model `state` (loading, warming, ready, failed).
        A server that does not get there in time is stopped before NotReady is raised
        (a fixture that fails while starting it never reaches its own stop)."""
        try:
            wait_until(
                lambda: self.client.get("/health").json()["model"] == state,
                f"the server's model {state}",
                timeout_s=timeout_s,
                interval_s=0.1,
                retry_on=(httpx.TransportError,),
                exited=lambda: None if self.proc.poll() is None else f"exited with {self.proc.returncode}",
            )
        except NotReady as exc:
            self.stop()
            raise NotReady(f"{exc}:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)


class RedisServer:
    """A real `redis-server` on a free port, without persistence; can be killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", *redis_server_args(self.port)],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            wait_until(
                client.ping,
                f"redis-server on port {self.port}",
                timeout_s=10,
                retry_on=(redis.ConnectionError,),
            )
        finally:
            client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None:
            kill_process(self.proc)

    def client(self):  # -> redis.Redis
        import redis

        return redis.Redis.from_url(self.url)
