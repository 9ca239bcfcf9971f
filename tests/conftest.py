"""Shared fixtures: a real server process on a free port serving the tiny model, two
replicas, a real Redis, and an in-process engine on the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import procs
from bench.procs import ROOT, RedisServer, free_port
from pipeline.engine import Engine
from tests.engines import started

__all__ = [
    "ROOT",
    "RedisServer",
    "Server",
    "free_port",
    "generations",
    "replica_pair",
    "ui_call",
    "wait_generating",
]


class Server(procs.Server):
    """The server process of bench/procs.py; with `faults`, started through
    tests/faults.py (the faults chosen by ZIMAGE_FAULT_* in `env`)."""

    def __init__(self, cache_dir: Path, *args: str, env: dict[str, str] | None = None, faults: bool = False):
        super().__init__(cache_dir, *args, env=env, launcher=("-m", "tests.faults") if faults else ())


@contextmanager
def replica_pair(root: Path, *args: str) -> Iterator[tuple[Server, Server]]:
    """Two servers with the same arguments (caches under root/a and root/b), started
    together so that their loads overlap, both ready; stopped afterwards."""
    a, b = Server(root / "a", *args), Server(root / "b", *args)
    try:
        yield a.wait_ready(), b.wait_ready()
    finally:
        a.stop()
        b.stop()


def generations(*servers: Server) -> int:
    """Images the servers have generated, all together."""
    return sum(s.client.get("/api/cache/stats").json()["generations"] for s in servers)


def wait_generating(
    client: httpx.Client, before: int, what: str, *, timeout_s: float = 30, **request: Any
) -> None:
    """Wait until the engine is on a generation submitted after `before` generations
    were counted (counted, and out of its queue). `request`: extra arguments of each
    GET (headers)."""

    def started() -> bool:
        counted = client.get("/api/cache/stats", **request).json()["generations"]
        return counted > before and not client.get("/api/info", **request).json()["queue"]["waiting"]

    procs.wait_until(started, what, timeout_s=timeout_s)


UI_FIELDS = {  # the UI's generate event, its inputs in order, with the UI's defaults
    "prompt": "",
    "negative_prompt": "",
    "seed": 42,
    "width": 64,
    "height": 64,
    "steps": 8,
    "guidance_scale": 0.0,
    "batch_size": 1,
    "no_cache": False,
    "prompt_normalization": "basic",
}


def ui_call(client: httpx.Client, **fields: Any) -> tuple[str, Any]:
    """Call the UI's generate event through Gradio's REST API as a raw client would
    (`/gradio_api/call/generate`, with Python's JSON, so NaN and lone surrogates go
    through as sent); returns the final message: ("complete", outputs) or ("error", ...)."""
    data = list((UI_FIELDS | fields).values())
    posted = client.post(
        "/gradio_api/call/generate",
        content=json.dumps({"data": data}),
        headers={"Content-Type": "application/json"},
    )
    assert posted.status_code == 200, posted.text
    stream = client.get(f"/gradio_api/call/generate/{posted.json()['event_id']}")
    event = payload = None
    for line in stream.text.splitlines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = json.loads(line.removeprefix("data: "))
    assert event in ("complete", "error"), stream.text
    return event, payload


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("shared") / "cache").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a module's engines build the tiny model (once per module)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Iterator[Engine]:
    """One started tiny-model engine for a module's tests."""
    eng = started(Engine("tiny", models_dir))
    yield eng
    eng.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.kill()


# A server with API keys and a CORS allow-list, shared by the protocol tests that
# need either (one start for all of them).
KEYED_TOKEN, KEYED_NAMESPACE = "proto-token-0123456789", "proto"
ALLOWED_ORIGIN = "https://chat.example.com"


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("keyed")
    keys = root / "api-keys.txt"
    keys.write_text(f"{KEYED_TOKEN} {KEYED_NAMESPACE}\n")
    srv = Server(root / "cache", "--api-keys", str(keys), "--cors-origins", ALLOWED_ORIGIN).wait_ready()
    yield srv
    srv.stop()
