"""Real processes on free ports, for the tests and the benchmarks: the server
(`python app.py`) and a `redis-server`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` in a subprocess, with its own port and cache directory; with
    `faults`, started through tests/faults.py (faults chosen by ZIMAGE_FAULT_* in `env`)."""

    def __init__(
        self, cache_dir: Path, *args: str, env: dict[str, str] | None = None, faults: bool = False
    ) -> None:
        self.cache_dir = cache_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cache_dir.parent / f"server-{self.port}.log"
        launcher = ["tests/faults.py"] if faults else []
        cmd = [sys.executable, *launcher, "app.py", "--port", str(self.port), "--cache-dir", str(cache_dir)]
        cmd += args
        # The tiny model, warmed at one small size: a start costs what loading costs.
        defaults = {"ZIMAGE_MODEL": "tiny", "ZIMAGE_WARMUP_SIZES": "256x256"}
        full_env = {**os.environ, **defaults, **(env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> Server:
        return self.wait_model("ready", timeout_s)

    def wait_model(self, state: str, timeout_s: float = START_TIMEOUT_S) -> Server:
        """Wait until /health reports the model `state` (loading, warming, ready, failed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get("/health").json()["model"] == state:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server's model not {state} after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisServer:
    """A real `redis-server` on a free port, without persistence; can be killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self):  # -> redis.Redis
        import redis

        return redis.Redis.from_url(self.url)
