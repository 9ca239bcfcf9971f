"""Cache tiers and keys, in-process."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import cache.layered as layered_module
from cache import MISS, DiskTier, Entry, Hit, LayeredCache, MemoryTier, is_key, make_key
from cache.entry import MAGIC, encode_record, record_kid
from cache.keyring import UNSIGNED_KID, Keyring, key_id, parse_secrets


def entry(n: int, size: int = 1000) -> Entry:
    return Entry(data=bytes([n % 256]) * size, ext="png", meta={"n": n})


def test_key_is_sha256_hex_and_ignores_field_order() -> None:
    a = make_key({"request": {"prompt": "x", "seed": 1}, "model": "m"})
    b = make_key({"model": "m", "request": {"seed": 1, "prompt": "x"}})
    assert a == b
    assert is_key(a)
    assert a != make_key({"request": {"prompt": "x", "seed": 2}, "model": "m"})
    assert a != make_key({"request": {"prompt": "x", "seed": 1}, "model": "other"})


def test_memory_tier_is_bounded_in_bytes_and_evicts_least_recent() -> None:
    tier = MemoryTier(max_bytes=3 * entry(0).size)
    for i in range(3):
        tier.put("ns", f"k{i}", entry(i))
    assert tier.get("ns", "k0") == entry(0)  # k0 is now the most recent
    tier.put("ns", "k3", entry(3))
    assert tier.get("ns", "k1") is MISS
    assert [tier.get("ns", k) is not MISS for k in ("k0", "k2", "k3")] == [True, True, True]
    assert tier.stats() == {"entries": 3, "bytes": 3 * entry(0).size}


def test_memory_tier_skips_entries_larger_than_its_budget() -> None:
    tier = MemoryTier(max_bytes=500)
    tier.put("ns", "big", entry(1, size=1000))
    assert tier.get("ns", "big") is MISS
    assert MemoryTier(max_bytes=0).stats()["entries"] == 0


def test_namespaces_never_share_entries(tmp_path: Path) -> None:
    for tier in (MemoryTier(10_000), DiskTier(tmp_path)):
        tier.put("alice", "k" * 64, entry(1))
        assert tier.get("bob", "k" * 64) is MISS
        assert tier.get("alice", "k" * 64) == entry(1)


def test_disk_tier_round_trip_and_layout(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    key = make_key({"x": 1})
    tier.put("public", key, entry(7))
    path = tmp_path / "public" / key[:2] / key[2:4] / key
    assert path.read_bytes().startswith(MAGIC)
    assert tier.get("public", key) == entry(7)
    assert tier.stats() == {"entries": 1, "bytes": path.stat().st_size}


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b[:-42] + bytes(10) + b[-32:],  # payload overwritten
        lambda b: b[:-32] + bytes(32),  # tag overwritten
        lambda b: b"",  # empty file
        lambda b: b"\x89PNG" + b[4:],  # wrong magic
        lambda b: b[: len(MAGIC) + 4] + b"{not json" + b[len(MAGIC) + 13 :],  # garbled header
    ],
)
def test_disk_tier_drops_damaged_files_as_misses(
    tmp_path: Path, damage, caplog: pytest.LogCaptureFixture
) -> None:
    tier = DiskTier(tmp_path)
    key = make_key({"x": 2})
    tier.put("public", key, entry(2))
    path = tier.path_for("public", key)
    path.write_bytes(damage(path.read_bytes()))
    assert tier.get("public", key) is MISS
    assert not path.exists()
    assert dropped(caplog) == 1


def edit_ext(record: bytes, new: bytes) -> bytes:
    """The record with its header's "ext" changed (and the header length fixed up),
    as someone with write access to the disk or Redis could."""
    edited = record.replace(b'"ext":"png"', b'"ext":"' + new + b'"')
    grown = len(edited) - len(record)
    length = int.from_bytes(record[len(MAGIC) : len(MAGIC) + 4], "big") + grown
    return edited[: len(MAGIC)] + length.to_bytes(4, "big") + edited[len(MAGIC) + 4 :]


def test_an_edited_header_is_caught_by_the_checksum(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tier = DiskTier(tmp_path)
    key = make_key({"x": "ext"})
    tier.put("public", key, entry(4))
    path = tier.path_for("public", key)
    path.write_bytes(edit_ext(path.read_bytes(), b"jpeg"))  # PNG bytes labelled JPEG
    assert tier.get("public", key) is MISS
    assert not path.exists() and dropped(caplog) == 1


SECRET_A, SECRET_B, SECRET_C = (f"cache-secret-{c}-".encode().ljust(32, c.encode()) for c in "abc")


def test_with_a_secret_only_records_signed_with_it_are_accepted(tmp_path: Path) -> None:
    signed = DiskTier(tmp_path, keyring=Keyring.of([SECRET_A]))
    plain, other = DiskTier(tmp_path), DiskTier(tmp_path, keyring=Keyring.of([SECRET_B]))
    a, b = make_key({"x": "signed"}), make_key({"x": "plain"})
    signed.put("public", a, entry(1))
    plain.put("public", b, entry(2))
    assert signed.get("public", a) == entry(1)
    # Unsigned (as a forger without the secret writes): never served, and not the
    # signed reader's to judge, so left in place.
    assert signed.get("public", b) is MISS and signed.path_for("public", b).exists()
    # Read without the secret, or with another one: not served, and kept for its owners.
    assert plain.get("public", a) is MISS and signed.path_for("public", a).exists()
    assert other.get("public", a) is MISS and signed.path_for("public", a).exists()
    assert signed.get("public", a) == entry(1)


def test_a_forged_record_under_our_key_id_is_removed(tmp_path: Path) -> None:
    signed = DiskTier(tmp_path, keyring=Keyring.of([SECRET_A]))
    key = make_key({"x": "forged"})
    signed.put("public", key, entry(1))
    path = signed.path_for("public", key)
    # The right key id, a tag made with another secret: damaged or forged, so removed.
    forged = encode_record("public", key, entry(2), Keyring.of([SECRET_B]))
    path.write_bytes(forged.replace(key_id(SECRET_B).encode(), key_id(SECRET_A).encode()))
    assert signed.get("public", key) is MISS and not path.exists()


def test_rotation_reads_with_any_secret_and_writes_with_the_first(tmp_path: Path) -> None:
    old = DiskTier(tmp_path, keyring=Keyring.of([SECRET_A]))
    rotated = DiskTier(tmp_path, keyring=Keyring.of([SECRET_C, SECRET_A]))
    a, c = make_key({"x": "old"}), make_key({"x": "new"})
    old.put("public", a, entry(1))
    assert rotated.get("public", a) == entry(1)  # nothing lost by adding a secret
    rotated.put("public", c, entry(2))
    assert record_kid(rotated.path_for("public", c).read_bytes()) == key_id(SECRET_C)
    assert old.get("public", c) is MISS and rotated.path_for("public", c).exists()


def test_secrets_shorter_than_32_bytes_are_refused_naming_which() -> None:
    assert parse_secrets(f"{SECRET_C.decode()}, {SECRET_A.decode()}") == [SECRET_C, SECRET_A]
    with pytest.raises(ValueError, match="the secret is 5 bytes; use at least 32"):
        parse_secrets("short")
    with pytest.raises(ValueError, match="secret 2 of 2 is 31 bytes"):
        parse_secrets(f"{SECRET_A.decode()},{'x' * 31}")
    # A key id names a secret without revealing it, and tells secrets apart.
    assert key_id(SECRET_A) != key_id(SECRET_B) and SECRET_A.hex()[:16] not in key_id(SECRET_A)
    assert Keyring().kids == (UNSIGNED_KID,) and Keyring.of([SECRET_C, SECRET_A]).kid == key_id(SECRET_C)


def test_disk_tier_rejects_a_file_copied_to_another_key(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    a, b = make_key({"x": "a"}), make_key({"x": "b"})
    tier.put("public", a, entry(1))
    tier.path_for("public", b).parent.mkdir(parents=True, exist_ok=True)
    tier.path_for("public", b).write_bytes(tier.path_for("public", a).read_bytes())
    assert tier.get("public", b) is MISS


def test_disk_write_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    key = make_key({"x": 3})

    bad = Entry(data=b"x", ext="png", meta={"bad": object()})  # json.dumps fails mid-write
    with pytest.raises(TypeError):
        tier.put("public", key, bad)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_disk_tier_concurrent_writers_and_readers_never_see_partial_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tier = DiskTier(tmp_path)
    key = make_key({"x": 4})
    big = [Entry(data=bytes([i]) * 300_000, ext="png", meta={"i": i}) for i in range(4)]
    errors: list[str] = []
    stop = threading.Event()

    def writer(e: Entry) -> None:
        for _ in range(20):
            tier.put("public", key, e)

    def reader() -> None:
        while not stop.is_set():
            got = tier.get("public", key)
            if got is not MISS and got not in big:
                errors.append("partial or mixed entry read")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(e,)) for e in big]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert dropped(caplog) == 0
    assert tier.get("public", key) in big
    assert not [n for n in os.listdir(tier.path_for("public", key).parent) if n.startswith(".")]


def test_layered_cache_promotes_lower_hits_upwards(tmp_path: Path) -> None:
    memory, disk = MemoryTier(1 << 20), DiskTier(tmp_path)
    layered = LayeredCache([memory, disk])
    disk.put("public", "k" * 64, entry(5))
    hit = layered.get("public", "k" * 64)
    assert hit == Hit(entry(5), "disk")
    assert memory.get("public", "k" * 64) == entry(5)
    assert layered.get("public", "k" * 64) == Hit(entry(5), "memory")


def test_a_failing_tier_becomes_a_miss_and_an_error_count(tmp_path: Path) -> None:
    class BrokenTier:
        name = "broken"

        def get(self, namespace: str, key: str) -> Entry:
            raise OSError("disk on fire")

        def put(self, namespace: str, key: str, entry: Entry) -> None:
            raise OSError("disk full")

        def discard(self, namespace: str, key: str) -> None:
            raise OSError("disk on fire")

        def stats(self) -> dict[str, int]:
            raise OSError("disk on fire")

    memory = MemoryTier(1 << 20)
    layered = LayeredCache([memory, BrokenTier()])  # type: ignore[list-item]
    assert layered.get("public", "a" * 64) is MISS
    layered.put("public", "a" * 64, entry(1))
    assert layered.get("public", "a" * 64) == Hit(entry(1), "memory")
    stats = layered.stats()
    assert stats["broken"]["errors"] == 3
    assert stats["memory"]["entries"] == 1


def test_a_hit_from_below_is_copied_to_memory_at_once_and_to_disk_in_the_background(tmp_path: Path) -> None:
    class LowerTier(DiskTier):  # stands where Redis stands: below the disk
        name = "lower"

    memory, disk, lower = MemoryTier(1 << 20), DiskTier(tmp_path / "disk"), LowerTier(tmp_path / "lower")
    layered = LayeredCache([memory, disk, lower])
    lower.put("public", "c" * 64, entry(7))
    assert memory.get("public", "c" * 64) is MISS
    assert layered.get("public", "c" * 64) == Hit(entry(7), "lower")
    assert memory.get("public", "c" * 64) == entry(7)  # before the hit was returned
    assert asyncio.run(layered.aget("public", "c" * 64)) == Hit(entry(7), "memory")
    assert layered.wait_promotions(timeout_s=10)
    assert disk.get("public", "c" * 64) == entry(7)


def test_copies_wait_for_a_quiet_cache_but_not_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit's copy into a slower tier is not written while lookups keep coming
    (QUIET_S apart or closer), is written once they stop, and is written anyway once
    it has waited MAX_DELAY_S; past MAX_PENDING_BYTES waiting, copies are skipped."""
    monkeypatch.setattr(layered_module, "QUIET_S", 0.3)
    monkeypatch.setattr(layered_module, "MAX_DELAY_S", 1.5)
    monkeypatch.setattr(layered_module, "MAX_PENDING_BYTES", 2 * entry(0).size)

    class LowerTier(DiskTier):
        name = "lower"

    disk, lower = DiskTier(tmp_path / "disk"), LowerTier(tmp_path / "lower")
    layered = LayeredCache([disk, lower])
    keys = [make_key({"copy": n}) for n in range(4)]
    for n, key in enumerate(keys):
        lower.put("public", key, entry(n))

    def busy(seconds: float, until: Callable[[], bool] = lambda: False) -> float:
        """Look up a missing key every 10 ms for `seconds` or until `until()`; the time taken."""
        started = time.monotonic()
        while time.monotonic() - started < seconds and not until():
            assert layered.get("public", "0" * 64) is MISS
            time.sleep(0.01)
        return time.monotonic() - started

    queued = time.monotonic()
    for key in keys[:3]:  # the third copy would pass the byte bound: skipped
        assert layered.get("public", key).tier == "lower"  # type: ignore[union-attr]
    busy(1.0)
    assert [disk.get("public", k) for k in keys] == [MISS] * 4  # busy: nothing written yet
    busy(10, until=lambda: disk.get("public", keys[1]) is not MISS)
    assert time.monotonic() - queued >= 1.5  # written while still busy, once due
    assert [disk.get("public", k) for k in keys[:2]] == [entry(0), entry(1)]
    assert layered.wait_promotions(10)
    assert disk.get("public", keys[2]) is MISS  # skipped, and still where it was found
    assert layered.get("public", keys[2]) == Hit(entry(2), "lower")

    assert layered.get("public", keys[3]).tier == "lower"  # type: ignore[union-attr]
    stopped = time.monotonic()
    assert layered.wait_promotions(10)  # quiet: written without waiting for the deadline
    assert time.monotonic() - stopped < 1.5
    assert disk.get("public", keys[3]) == entry(3)
    layered.close()


def dropped(caplog: pytest.LogCaptureFixture) -> int:
    """Corrupt entries a tier dropped, as its log says (one warning each)."""
    return sum("dropping corrupt entry" in r.getMessage() for r in caplog.records)
