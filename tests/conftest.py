"""Shared fixtures: a real server process on a free port serving the tiny model, a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import ROOT, RedisServer, Server, free_port

__all__ = ["ROOT", "RedisServer", "Server", "free_port"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("shared") / "cache").wait_ready()
    yield srv
    srv.stop()


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
