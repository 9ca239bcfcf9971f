"""Near-repeats below the service: the real embedding model, the per-namespace index,
its journal on disk (lost, damaged, cut short, shared), and Redis between replicas."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cache import DiskTier, Entry
from similarity import VectorIndex, load_embedder
from similarity.embedding import Embedder, normalise
from similarity.journal import Journal, JournalDamaged, Record
from similarity.near_repeats import NearRepeats
from similarity.shared import SharedPrompts
from similarity.stored import PROMPT_FIELD, SCOPE_FIELD, disk_prompts
from tests.conftest import RedisServer

FOX = "a red fox standing in the snow"
STORED = [
    FOX,
    "a bowl of ramen on a wooden table",
    "a lighthouse on a cliff at sunset",
    "an astronaut riding a horse on the moon",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = load_embedder()
    model.embed(["warm-up"])  # loads the weights once for the module
    return model


def key(i: int) -> str:
    return f"{i:064x}"


def filled(near: NearRepeats, namespace: str = "default") -> NearRepeats:
    for i, prompt in enumerate(STORED):
        near.add(namespace, key(i), prompt)
    return near


def test_reworded_prompts_in_english_and_chinese_find_their_original(embedder: Embedder) -> None:
    near = filled(NearRepeats(embedder, None))
    for reworded in ("a red fox in the snow, photo", "雪地里的一只红狐狸"):
        found = near.search("default", near.embed(reworded), 4, 0.6)
        assert found and found[0].key == key(0) and found[0].prompt == FOX, (reworded, found)
        assert 0.6 <= found[0].score < 1.0
    # nothing like it is stored: nothing suggested
    assert near.search("default", near.embed("a spreadsheet of quarterly tax figures"), 4, 0.6) == []


def test_suggestions_come_from_the_asking_namespace_only(embedder: Embedder, tmp_path: Path) -> None:
    near = filled(NearRepeats(embedder, tmp_path), "tenant-a")
    fox = near.embed("a red fox in the snow")
    assert [m.key for m in near.search("tenant-a", fox, 4, 0.6)][:1] == [key(0)]
    assert near.search("tenant-b", fox, 4, 0.0) == []
    # another model's images (another scope) are not offered either
    assert near.search("tenant-a", fox, 4, 0.0, scope="another-model") == []
    # each namespace has its own file: tenant-b's holds nothing of tenant-a's
    assert not (tmp_path / embedder.name / "any" / "tenant-b.log").exists()
    with pytest.raises(ValueError, match="namespace"):
        near.search("../tenant-a", fox, 4, 0.0)


@pytest.mark.parametrize("exact_limit", [10_000, 0])
def test_index_finds_the_nearest_exact_and_past_the_crossover(exact_limit: int) -> None:
    rng = np.random.default_rng(1)
    vectors = normalise(rng.standard_normal((500, 64)).astype(np.float32))
    index = VectorIndex(64, exact_limit=exact_limit)
    assert index.add_many([key(i) for i in range(500)], [f"p{i}" for i in range(500)], vectors) == 500
    assert index.approximate is (exact_limit == 0)
    assert not index.add(key(3), "again", vectors[3])
    assert [m.key for m in index.search(vectors[3], 1, 0.9)] == [key(3)]
    index.discard(key(3))
    assert key(3) not in [m.key for m in index.search(vectors[3], 4, -1.0)]
    assert len(index) == 499


def test_journal_survives_a_restart_without_embedding_again(embedder: Embedder, tmp_path: Path) -> None:
    filled(NearRepeats(embedder, tmp_path))
    asked: list[str] = []
    again = NearRepeats(embedder, tmp_path, stored_prompts=lambda ns: asked.append(ns) or [])
    found = again.search("default", again.embed("a lighthouse on a cliff at dusk"), 1, 0.6)
    assert [m.key for m in found] == [key(2)]
    assert asked == []  # read from the journal, not rebuilt
    assert again.stats() == {"namespaces": 1, "prompts": len(STORED)}


def stored_disk(root: Path) -> DiskTier:
    disk = DiskTier(root / "images")
    for i, prompt in enumerate(STORED):
        disk.put("default", key(i), Entry(b"png bytes", "png", {PROMPT_FIELD: prompt, SCOPE_FIELD: "any"}))
    disk.put("default", key(98), Entry(b"another model's", "png", {PROMPT_FIELD: FOX, SCOPE_FIELD: "older"}))
    disk.put("default", key(99), Entry(b"no prompt in its metadata", "png", {"seed": 1}))
    disk.put("default", key(97), Entry(b"a JPEG copy", "jpeg", {PROMPT_FIELD: FOX, SCOPE_FIELD: "any"}))
    return disk


@pytest.mark.parametrize("damage", ["lost", "flipped byte", "other model", "garbage"])
def test_lost_or_damaged_journal_is_rebuilt_from_the_entries(
    embedder: Embedder, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    disk = stored_disk(tmp_path)
    filled(NearRepeats(embedder, tmp_path))
    path = tmp_path / embedder.name / "any" / "default.log"
    data = bytearray(path.read_bytes())
    if damage == "lost":
        path.unlink()
    elif damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "other model":
        path.write_bytes(
            bytes(data).replace(embedder.name.encode(), b"another-model-xx"[: len(embedder.name)])
        )
    else:
        path.write_bytes(b"\x00" * 100)
    caplog.set_level(logging.INFO)
    near = NearRepeats(embedder, tmp_path, stored_prompts=disk_prompts(disk, "png"))
    near.search("default", near.embed(FOX), 1, 0.6)  # loads the namespace: starts the rebuild
    near.wait_rebuilt(60)
    assert "rebuilding namespace 'default'" in caplog.text
    assert [m.key for m in near.search("default", near.embed("雪地里的一只红狐狸"), 1, 0.6)] == [key(0)]
    # neither the entry without a prompt, nor another model's, nor a copy in another format
    assert near.stats()["prompts"] == len(STORED)
    # the rebuilt journal is whole: a restart reads it back without rebuilding
    reread = Journal(path, embedder.name, embedder.dim).read()
    assert sorted(r.key for r in reread) == [key(i) for i in range(len(STORED))]


def test_a_record_cut_short_by_a_crash_is_left_unread(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "ns.log", "m", 4)
    for i in range(3):
        journal.append(Record(key(i), f"p{i}", np.full(4, i, np.float32)))
    whole = (tmp_path / "ns.log").read_bytes()
    (tmp_path / "ns.log").write_bytes(whole[:-5])  # the last append died mid-write
    assert [r.key for r in Journal(tmp_path / "ns.log", "m", 4).read()] == [key(0), key(1)]
    # a record appended after the cut one makes the file damaged: the caller rebuilds
    journal.append(Record(key(3), "p3", np.ones(4, np.float32)))
    with pytest.raises(JournalDamaged):
        Journal(tmp_path / "ns.log", "m", 4).read()


def test_processes_sharing_a_cache_directory_see_each_others_prompts(
    embedder: Embedder, tmp_path: Path
) -> None:
    one, other = NearRepeats(embedder, tmp_path), NearRepeats(embedder, tmp_path)
    assert other.search("default", other.embed(FOX), 1, 0.6) == []
    one.add("default", key(0), FOX)
    assert [m.key for m in other.search("default", other.embed("a red fox in the snow"), 1, 0.6)] == [key(0)]


@pytest.fixture
def shared_pair(
    embedder: Embedder, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[NearRepeats, NearRepeats]]:
    """Two replicas: each its own cache directory, one Redis."""
    a = NearRepeats(
        embedder, tmp_path / "a", shared=SharedPrompts(redis_server.url, embedder.name, embedder.dim)
    )
    b = NearRepeats(
        embedder, tmp_path / "b", shared=SharedPrompts(redis_server.url, embedder.name, embedder.dim)
    )
    yield a, b
    a.close()
    b.close()


def test_what_one_replica_stores_the_other_finds_through_redis(
    shared_pair: tuple[NearRepeats, NearRepeats],
) -> None:
    a, b = shared_pair
    fox = b.embed("雪地里的一只红狐狸")
    assert b.search("tenant", fox, 4, 0.6) == []
    filled(a, "tenant")
    found = b.search("tenant", fox, 4, 0.6)
    assert found[0].key == key(0) and found[0].prompt == FOX
    assert b.search("other", fox, 4, 0.0) == []  # another namespace's stream is another stream
    # b's own additions reach a too, and nothing is indexed twice
    b.add("tenant", key(50), "a green tractor in a muddy field")
    assert [m.key for m in a.search("tenant", a.embed("a green tractor in mud"), 1, 0.6)] == [key(50)]
    assert a.stats()["prompts"] == b.stats()["prompts"] == len(STORED) + 1


def test_a_dead_redis_leaves_the_local_index_working(
    embedder: Embedder, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    near = NearRepeats(
        embedder, tmp_path, shared=SharedPrompts(redis_server.url, embedder.name, embedder.dim)
    )
    redis_server.kill()
    filled(near)  # publishing fails: logged, then skipped while Redis backs off
    assert "could not publish to Redis" in caplog.text
    assert [m.key for m in near.search("default", near.embed(FOX), 1, 0.9)] == [key(0)]
    near.close()
