"""`python -m cache` and the maintenance functions: prune, verify, clear, stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cache import DiskTier, Entry, make_key
from cache.disk import TOUCH_INTERVAL_S
from cache.entry import MAGIC
from cache.keyring import UNSIGNED_KID, Keyring, key_id
from cache.maintenance import STALE_TEMP_S, prune, verify
from cache.units import parse_duration, parse_size
from tests.test_cache import edit_ext

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def fill(
    disk: DiskTier, n: int, *, namespace: str = "public", size: int = 10_000, age_days: float = 0
) -> list[str]:
    """n entries, the i-th last used `age_days + i` days ago (so key 0 is the most recent)."""
    keys = []
    for i in range(n):
        key = make_key({"ns": namespace, "i": i, "size": size})
        disk.put(namespace, key, Entry(bytes([i % 256]) * size, "png", {"i": i}))
        when = time.time() - (age_days + i) * DAY
        os.utime(disk.path_for(namespace, key), (when, when))
        keys.append(key)
    return keys


def cli(cache_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache", "--cache-dir", str(cache_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_prune_removes_entries_unused_past_max_age(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    keys = fill(disk, 10)  # ages 0..9 days
    report = prune(disk, max_age_s=parse_duration("7d") - 3600, max_bytes=None)
    assert report.removed_expired == 3
    remaining = {f.key for f in disk.files()}
    assert remaining == set(keys[:7])


def test_prune_evicts_least_recently_used_first_down_to_max_size(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    keys = fill(disk, 10)
    newest_four = sum(disk.path_for("public", k).stat().st_size for k in keys[:4])
    report = prune(disk, max_age_s=None, max_bytes=newest_four)
    assert report.removed_for_size == 6
    assert {f.key for f in disk.files()} == set(keys[:4])  # the four most recently used
    assert report.kept_bytes == disk.stats()["bytes"] == newest_four


def test_a_hit_marks_an_entry_as_recently_used(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    old, _newer = fill(disk, 2, age_days=3)[::-1]  # fill gives later entries older times
    disk.get("public", old)  # a hit: now the most recently used
    file_size = disk.path_for("public", old).stat().st_size
    prune(disk, max_age_s=None, max_bytes=file_size)
    assert [f.key for f in disk.files()] == [old]
    assert time.time() - disk.path_for("public", old).stat().st_mtime < TOUCH_INTERVAL_S


def test_dry_run_reports_without_removing(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    fill(disk, 5, age_days=30)
    report = prune(disk, max_age_s=DAY, max_bytes=0, dry_run=True)
    assert report.removed_expired == 5
    assert disk.stats()["entries"] == 5
    assert disk.remove_all(dry_run=True)[0] == 5
    assert disk.stats()["entries"] == 5


def test_prune_removes_only_stale_temp_files(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    key = fill(disk, 1)[0]
    shard = disk.path_for("public", key).parent
    fresh, stale = shard / f".{key}.fresh.tmp", shard / f".{key}.stale.tmp"
    fresh.write_bytes(b"being written")
    stale.write_bytes(b"left by a crash")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    report = prune(disk, max_age_s=None, max_bytes=None)
    assert report.removed_temp == 1
    assert fresh.exists() and not stale.exists()
    assert disk.stats()["entries"] == 1  # temp files are never counted as entries


def test_verify_removes_corrupt_entries_and_reports_counts(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    keys = fill(disk, 6)
    for key in keys[:2]:
        path = disk.path_for("public", key)
        path.write_bytes(path.read_bytes()[:-3])
    report = verify(disk)
    assert (report.checked, report.ok, report.corrupt, report.removed) == (6, 4, 2, 2)
    assert report.problems == {"truncated": 2}
    assert {f.key for f in disk.files()} == set(keys[2:])
    assert verify(disk).corrupt == 0


def test_verify_removes_entries_of_an_older_record_format(tmp_path: Path) -> None:
    """After an upgrade that changed the record format, the old files are never read
    again (their keys changed too): verify names them as such and removes them."""
    disk = DiskTier(tmp_path)
    keys = fill(disk, 2)
    path = disk.path_for("public", keys[0])
    path.write_bytes(path.read_bytes().replace(MAGIC, MAGIC[:-2] + b"\x02\n", 1))
    report = verify(disk)
    assert report.problems == {f"record format 2, this version reads {MAGIC[-2]}": 1}
    assert {f.key for f in disk.files()} == {keys[1]}


def test_clear_one_namespace_leaves_the_others(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    fill(disk, 3, namespace="alice")
    bob = fill(disk, 2, namespace="bob")
    assert disk.remove_all("alice")[0] == 3
    assert {f.key for f in disk.files()} == set(bob)
    assert disk.remove_all()[0] == 2
    assert disk.stats()["entries"] == 0


def test_maintenance_is_safe_while_a_writer_runs(tmp_path: Path) -> None:
    """Prune, verify and clear race a writer: no partial entry is ever left or read,
    and the writer never fails."""
    disk = DiskTier(tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []
    written = [0]

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                key = make_key({"w": i % 40})
                disk.put("public", key, Entry(bytes([i % 256]) * 200_000, "png", {"i": i}))
                i += 1
            written[0] = i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    corrupt_seen = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        prune(disk, max_age_s=None, max_bytes=2_000_000)
        corrupt_seen += verify(disk).corrupt
        disk.remove_all("public")
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert written[0] > 10
    assert corrupt_seen == 0
    final = verify(disk)
    assert final.corrupt == 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_cli_prune_stats_verify_clear(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "images")
    fill(disk, 4, age_days=10)
    fill(disk, 2, namespace="team")
    stats = cli(tmp_path, "stats")
    assert stats.returncode == 0
    assert "public: 4 entries" in stats.stdout and "team: 2 entries" in stats.stdout
    dry = cli(tmp_path, "prune", "--max-age", "7d", "--max-size", "20GiB", "--dry-run")
    assert dry.returncode == 0 and "would remove 4 expired" in dry.stdout
    assert disk.stats()["entries"] == 6
    done = cli(tmp_path, "--json", "prune", "--max-age", "7d")
    assert json.loads(done.stdout)["removed_expired"] == 4
    key = next(disk.files()).path
    key.write_bytes(b"rubbish")
    bad = cli(tmp_path, "verify")
    assert bad.returncode == 1 and "1 corrupt, 1 removed" in bad.stdout
    cleared = cli(tmp_path, "clear", "--namespace", "team")
    assert cleared.returncode == 0 and "removed 1 entries" in cleared.stdout


def test_cli_takes_its_options_after_the_command_as_the_readme_writes_them(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "images")
    fill(disk, 2, namespace="team")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    stats = run("stats", "--cache-dir", str(tmp_path))  # README: python -m cache stats --cache-dir DIR
    assert stats.returncode == 0 and "team: 2 entries" in stats.stdout, stats.stderr
    report = run("stats", "--cache-dir", str(tmp_path), "--json")
    assert report.returncode == 0 and json.loads(report.stdout)["team"]["entries"] == 2
    # After the command wins over before it; before it still works.
    both = run("--cache-dir", str(tmp_path / "nowhere"), "--json", "stats", "--cache-dir", str(tmp_path))
    assert both.returncode == 0 and json.loads(both.stdout)["team"]["entries"] == 2
    for command in (
        ["prune", "--max-age", "7d", "--dry-run"],
        ["verify", "--dry-run"],
        ["clear", "--dry-run"],
    ):
        done = run(*command, "--cache-dir", str(tmp_path))
        assert done.returncode == 0, (command, done.stderr)
    assert disk.stats()["entries"] == 2


def test_cli_verify_catches_an_edited_header_and_takes_the_secret(tmp_path: Path) -> None:
    secret = "the-cache-secret-0123".ljust(32, "-")
    disk = DiskTier(tmp_path / "images", keyring=Keyring.of([secret.encode()]))
    keys = fill(disk, 3)
    path = disk.path_for("public", keys[0])
    path.write_bytes(edit_ext(path.read_bytes(), b"jpeg"))  # PNG bytes labelled JPEG
    # Without the secret nothing signed can be judged: reported, kept, exit 2.
    blind = cli(tmp_path, "--json", "verify")
    assert blind.returncode == 2 and json.loads(blind.stdout)["unverifiable"] == 3
    assert path.exists()
    flag = cli(tmp_path, "--json", "verify", "--dry-run", "--cache-secret", secret)
    assert flag.returncode == 1 and json.loads(flag.stdout)["corrupt"] == 1
    env = subprocess.run(
        [sys.executable, "-m", "cache", "--cache-dir", str(tmp_path), "--json", "verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ZIMAGE_CACHE_SECRET": secret},
    )
    report = json.loads(env.stdout)
    assert env.returncode == 1 and (report["ok"], report["corrupt"], report["removed"]) == (2, 1, 1)
    assert report["problems"] == {"checksum mismatch": 1} and not path.exists()


def test_cli_verify_with_a_wrong_secret_keeps_every_entry(tmp_path: Path) -> None:
    right, wrong = "r" * 32, "w" * 32
    signed = DiskTier(tmp_path / "images", keyring=Keyring.of([right.encode()]))
    unsigned = DiskTier(tmp_path / "images")
    fill(signed, 3)
    plain = [make_key({"plain": n}) for n in range(2)]
    for n, key in enumerate(plain):
        unsigned.put("public", key, Entry(bytes([n]) * 100, "png"))
    before = sorted(p.read_bytes() for p in (tmp_path / "images").rglob("*") if p.is_file())
    # A wrong secret judges nothing it cannot check: 5 kept, reported by key id, exit 2.
    blind = cli(tmp_path, "--json", "verify", "--cache-secret", wrong)
    report = json.loads(blind.stdout)
    assert blind.returncode == 2 and (report["unverifiable"], report["removed"]) == (5, 0)
    assert report["unknown_kids"] == {key_id(right.encode()): 3, UNSIGNED_KID: 2}
    assert sorted(p.read_bytes() for p in (tmp_path / "images").rglob("*") if p.is_file()) == before
    # The right one, rotated behind a new one: every signed entry checks out.
    rotated = cli(tmp_path, "--json", "verify", "--cache-secret", f"{wrong},{right}")
    assert json.loads(rotated.stdout)["ok"] == 3
    # Removing them takes a flag.
    purge = cli(tmp_path, "--json", "verify", "--cache-secret", wrong, "--remove-unverifiable")
    assert purge.returncode == 0 and json.loads(purge.stdout)["removed"] == 5
    assert not any(p.is_file() for p in (tmp_path / "images").rglob("*"))


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_cli_refuses_a_short_secret_naming_the_setting(tmp_path: Path, given: str) -> None:
    fill(DiskTier(tmp_path / "images"), 1)
    if given == "flag":
        done = cli(tmp_path, "verify", "--cache-secret", "short")
    else:
        done = subprocess.run(
            [sys.executable, "-m", "cache", "--cache-dir", str(tmp_path), "verify"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "ZIMAGE_CACHE_SECRET": "short"},
        )
    assert done.returncode == 2
    assert "5 bytes; use at least 32" in done.stderr and "ZIMAGE_CACHE_SECRET" in done.stderr
    assert sum(1 for p in (tmp_path / "images").rglob("*") if p.is_file()) == 1


def test_cli_verify_catches_an_edited_header_without_a_secret(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "images")
    key = fill(disk, 1)[0]
    path = disk.path_for("public", key)
    path.write_bytes(edit_ext(path.read_bytes(), b"jpeg"))
    bad = cli(tmp_path, "verify")
    assert bad.returncode == 1 and "1 corrupt, 1 removed (checksum mismatch: 1)" in bad.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["prune", "--max-size", "lots"], "is not a size"),
        (["prune", "--max-age", "7 fortnights"], "is not a duration"),
        (["clear", "--namespace", "../x"], "is not a namespace"),
    ],
)
def test_cli_rejects_bad_arguments_clearly(tmp_path: Path, args: list[str], complaint: str) -> None:
    DiskTier(tmp_path / "images")
    proc = cli(tmp_path, *args)
    assert proc.returncode == 2
    assert complaint in proc.stderr


def test_cli_names_a_missing_cache_dir(tmp_path: Path) -> None:
    proc = cli(tmp_path / "nowhere", "stats")
    assert proc.returncode == 2 and "--cache-dir" in proc.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20GiB", 20 * 2**30), ("500MB", 500 * 10**6), ("1048576", 2**20), ("1.5GiB", 3 * 2**29)],
)
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("7d", 7 * DAY), ("12h", 43200), ("1d12h", 1.5 * DAY), ("90", 90)]
)
def test_durations_parse(text: str, expected: float) -> None:
    assert parse_duration(text) == expected
