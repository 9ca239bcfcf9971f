"""Disk-cache maintenance: prune to size and age bounds, verify, stats (clear: DiskTier.remove_all).

Everything here is safe while servers write to the same directory: writes go
to temp files that are renamed into place, so an entry file is always whole;
temp files are left alone unless they are older than STALE_TEMP_S (a crash's
leftovers); and a file is removed only if it is still the one that was judged
(same inode), never one that a writer just renamed over it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from cache.disk import DiskTier
from cache.entry import CorruptEntry, UnverifiableEntry, decode_record, record_kid

log = logging.getLogger(__name__)

STALE_TEMP_S = 3600.0


@dataclass
class PruneReport:
    entries: int = 0
    bytes: int = 0
    removed_expired: int = 0
    removed_for_size: int = 0
    removed_bytes: int = 0
    removed_temp: int = 0
    kept_entries: int = 0
    kept_bytes: int = 0


@dataclass
class VerifyReport:
    checked: int = 0
    ok: int = 0
    corrupt: int = 0
    removed: int = 0
    unverifiable: int = 0  # signed with a secret not given (or unsigned, when one is): kept
    unknown_kids: Counter[str] = field(default_factory=Counter)  # those, by the key id they claim
    problems: Counter[str] = field(default_factory=Counter)


def prune(
    disk: DiskTier,
    *,
    max_age_s: float | None,
    max_bytes: int | None,
    dry_run: bool = False,
    now: float | None = None,
) -> PruneReport:
    """Remove entries unused for longer than `max_age_s`, then the least recently
    used until the rest fit in `max_bytes`; also stale temp files. With `dry_run`
    nothing is removed and the report says what would be."""
    now = time.time() if now is None else now
    report = PruneReport()
    files = sorted(disk.files(), key=lambda f: f.mtime)  # least recently used first
    report.entries, report.bytes = len(files), sum(f.size for f in files)

    kept = []
    for stored in files:
        if max_age_s is not None and now - stored.mtime > max_age_s:
            if disk.remove(stored, dry_run=dry_run):
                report.removed_expired += 1
                report.removed_bytes += stored.size
        else:
            kept.append(stored)

    total = sum(f.size for f in kept)
    for stored in kept:
        if max_bytes is None or total <= max_bytes:
            break
        if disk.remove(stored, dry_run=dry_run):
            report.removed_for_size += 1
            report.removed_bytes += stored.size
            total -= stored.size

    for path, mtime in disk.temp_files():
        if now - mtime > STALE_TEMP_S:
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            report.removed_temp += 1

    report.kept_entries = report.entries - report.removed_expired - report.removed_for_size
    report.kept_bytes = report.bytes - report.removed_bytes
    return report


def verify(disk: DiskTier, *, dry_run: bool = False, remove_unverifiable: bool = False) -> VerifyReport:
    """Read and check every entry with the disk tier's keyring; remove those that fail
    (unless `dry_run`). Entries signed with a secret the keyring lacks (or unsigned,
    under a keyring with secrets) are counted as `unverifiable`, by the key id they
    claim, and kept: a forgotten, mistyped or rotated-out secret must not empty the
    cache. `remove_unverifiable` removes them too (a retired secret's leftovers)."""
    report = VerifyReport()
    for stored in disk.files():
        report.checked += 1
        try:
            with open(stored.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                blob = f.read()
            decode_record(blob, stored.namespace, stored.key, disk.keyring)
        except FileNotFoundError:
            report.checked -= 1  # pruned or replaced under us: nothing to judge
            continue
        except UnverifiableEntry:
            report.unverifiable += 1
            report.unknown_kids[record_kid(blob) or "?"] += 1
            if remove_unverifiable and disk.remove(replace(stored, inode=inode), dry_run=dry_run):
                report.removed += 1
            continue
        except CorruptEntry as exc:
            report.corrupt += 1
            report.problems[str(exc).split(":")[0]] += 1
            log.warning("corrupt entry %s: %s", stored.path, exc)
            if disk.remove(replace(stored, inode=inode), dry_run=dry_run):
                report.removed += 1
            continue
        report.ok += 1
    return report


def namespace_stats(disk: DiskTier) -> dict[str, dict[str, int]]:
    """Entries and bytes per namespace."""
    out: dict[str, dict[str, int]] = {}
    for stored in disk.files():
        ns = out.setdefault(stored.namespace, {"entries": 0, "bytes": 0})
        ns["entries"] += 1
        ns["bytes"] += stored.size
    return out


class Pruner:
    """Runs `prune` every `interval_s` on a daemon thread, keeping the disk tier
    within its bounds between the cron runs. Errors are logged, never raised."""

    def __init__(
        self, disk: DiskTier, *, max_age_s: float, max_bytes: int, interval_s: float = 600.0
    ) -> None:
        self.disk, self.max_age_s, self.max_bytes, self.interval_s = disk, max_age_s, max_bytes, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zimage-pruner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; waits up to `timeout_s` for a prune in progress to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                report = prune(self.disk, max_age_s=self.max_age_s, max_bytes=self.max_bytes)
            except Exception:
                log.exception("disk cache prune failed")
                continue
            removed = report.removed_expired + report.removed_for_size
            if removed or report.removed_temp:
                log.info(
                    "disk cache pruned: %d entries (%d bytes) and %d stale temp files removed; %d entries kept",
                    removed,
                    report.removed_bytes,
                    report.removed_temp,
                    report.kept_entries,
                )
