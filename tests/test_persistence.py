"""The disk tier across restarts: hits survive, corrupt files are regenerated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cache import DiskTier
from tests.conftest import Server

PROMPTS = ["a persistent teapot", "a corrupted teapot", "a truncated teapot"]


@pytest.fixture(scope="module")
def restarted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, dict]]]:
    """A server that generated PROMPTS, was stopped, and a new one on the same directory."""
    cache_dir = tmp_path_factory.mktemp("persist") / "cache"
    first = Server(cache_dir).wait_ready()
    try:
        made = {}
        for prompt in PROMPTS:
            resp = first.client.post(
                "/generate", json={"prompt": prompt, "width": 64, "height": 64, "seed": 1}
            )
            assert resp.headers["x-cache"] == "miss"
            made[prompt] = {"key": resp.headers["x-key"], "bytes": resp.content}
    finally:
        first.stop()
    disk = DiskTier(cache_dir / "images")
    corrupt = disk.path_for("public", made["a corrupted teapot"]["key"])
    blob = bytearray(corrupt.read_bytes())
    blob[-100] ^= 0xFF
    corrupt.write_bytes(bytes(blob))
    truncated = disk.path_for("public", made["a truncated teapot"]["key"])
    truncated.write_bytes(truncated.read_bytes()[:-500])

    second = Server(cache_dir).wait_ready()
    yield second, made
    second.stop()


def test_disk_hit_survives_restart_with_identical_bytes(restarted: tuple[Server, dict]) -> None:
    server, made = restarted
    resp = server.client.post("/generate", json={"prompt": PROMPTS[0], "width": 64, "height": 64, "seed": 1})
    assert resp.headers["x-cache"] == "disk"
    assert resp.content == made[PROMPTS[0]]["bytes"]
    # promoted: the next one comes from memory
    again = server.client.post("/generate", json={"prompt": PROMPTS[0], "width": 64, "height": 64, "seed": 1})
    assert again.headers["x-cache"] == "memory"
    assert again.content == made[PROMPTS[0]]["bytes"]


@pytest.mark.parametrize("prompt", PROMPTS[1:])
def test_damaged_disk_entry_is_regenerated_and_replaced(restarted: tuple[Server, dict], prompt: str) -> None:
    server, made = restarted
    path = DiskTier(server.cache_dir / "images").path_for("public", made[prompt]["key"])
    damaged = path.read_bytes()
    resp = server.client.post("/generate", json={"prompt": prompt, "width": 64, "height": 64, "seed": 1})
    assert resp.headers["x-cache"] == "miss"
    assert resp.content == made[prompt]["bytes"]  # deterministic regeneration
    assert path.read_bytes() != damaged
    assert (
        DiskTier(server.cache_dir / "images").get("public", made[prompt]["key"]).data == made[prompt]["bytes"]
    )


def test_no_temp_files_left_behind(restarted: tuple[Server, dict]) -> None:
    server, _ = restarted
    leftovers = [p for p in Path(server.cache_dir / "images").rglob(".*") if p.is_file()]
    assert leftovers == []
