"""L2: one file per entry in sharded directories under the cache directory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cache.entry import (
    MISS,
    UNSIGNED,
    CorruptEntry,
    Entry,
    UnverifiableEntry,
    _Miss,
    decode_record,
    encode_record,
)
from cache.keyring import Keyring
from cache.keys import is_key, is_namespace

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# A hit marks the file as used (its mtime) at most this often, so eviction can
# go least recently used first without a write on every hit.
TOUCH_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class StoredFile:
    """One committed entry file as found on disk."""

    namespace: str
    key: str
    path: Path
    size: int
    mtime: float  # last write or last use, whichever is later (to TOUCH_INTERVAL_S)
    inode: int


class DiskTier:
    """Entries as files `<root>/<namespace>/<k0k1>/<k2k3>/<key>`.

    Guarantees: a write goes to a temp file (`.<key>.*.tmp`) in the target
    directory, is fsynced and renamed over the final name, so readers in any
    thread or process see a whole old entry, a whole new one, or none; a failed
    write (disk full, ...) removes its temp file and raises OSError for the
    caller to count. Every read verifies the record's tag (an XXH3 checksum, or with
    a `keyring` an HMAC under the secret its key id names, over header and payload);
    a corrupt file is removed and reported as a miss, one signed with a secret this
    tier lacks is a miss left in place. Writes sign with the keyring's first secret.
    Survives restarts. Size and age bounds are enforced
    by `cache.maintenance.prune`, which evicts least recently used first.
    """

    name = "disk"
    blocking = True

    def __init__(self, root: Path, *, keyring: Keyring = UNSIGNED) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.keyring = keyring
        self._warned_unverifiable = False

    def path_for(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / key[2:4] / key

    def get(self, namespace: str, key: str) -> Entry | _Miss:
        path = self.path_for(namespace, key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                blob = f.read()
        except FileNotFoundError:
            return MISS
        try:
            entry = decode_record(blob, namespace, key, self.keyring)
        except UnverifiableEntry as exc:
            if not self._warned_unverifiable:
                self._warned_unverifiable = True
                log.warning("disk cache: %s (%s); treated as misses", exc, path)
            return MISS
        except CorruptEntry as exc:
            log.warning("disk cache: dropping corrupt entry %s (%s)", path, exc)
            remove_if_unchanged(path, st.st_ino)
            return MISS
        if time.time() - st.st_mtime > TOUCH_INTERVAL_S:
            with contextlib.suppress(OSError):
                os.utime(path)
        return entry

    async def aget(self, namespace: str, key: str) -> Entry | _Miss:
        """`get` for the event loop: whether the file exists is one stat() there
        (microseconds on a local disk), so a miss takes no thread; a present file is
        read and checked on a thread. A cache directory on a network filesystem
        would stall the loop on that stat: keep it on a local disk."""
        if not os.path.exists(self.path_for(namespace, key)):
            return MISS
        return await asyncio.to_thread(self.get, namespace, key)

    def put(self, namespace: str, key: str, entry: Entry) -> None:
        path = self.path_for(namespace, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode_record(namespace, key, entry, self.keyring))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def discard(self, namespace: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_for(namespace, key))

    def clear(self, namespace: str) -> int:
        """Remove every entry of `namespace`; returns how many (the Tier form of `remove_all`)."""
        return self.remove_all(namespace)[0]

    def remove_all(self, namespace: str | None = None, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove every entry (of one namespace, or all); returns (entries, bytes) removed,
        or with `dry_run` what would be. Writes in progress are not disturbed: their temp
        files stay and land whole."""
        count = size = 0
        for stored in self.files(namespace):
            if self.remove(stored, dry_run=dry_run):
                count += 1
                size += stored.size
        return count, size

    def remove(self, stored: StoredFile, *, dry_run: bool = False) -> bool:
        """Remove one entry file if it is still the one judged (see remove_if_unchanged)."""
        return True if dry_run else remove_if_unchanged(stored.path, stored.inode)

    def files(self, namespace: str | None = None) -> Iterator[StoredFile]:
        """Every committed entry file (of one namespace, or all), in no particular order.
        Temp files and anything not shaped like an entry are skipped."""
        for ns, item in self._walk(namespace):
            if is_key(item.name):
                with contextlib.suppress(FileNotFoundError):
                    st = item.stat()
                    yield StoredFile(ns, item.name, Path(item.path), st.st_size, st.st_mtime, st.st_ino)

    def temp_files(self) -> Iterator[tuple[Path, float]]:
        """(path, mtime) of every temp file: writes in progress, or left by a crash."""
        for _, item in self._walk(None):
            if item.name.startswith(".") and item.name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    yield Path(item.path), item.stat().st_mtime

    def stats(self) -> dict[str, int]:
        entries = size = 0
        for stored in self.files():
            entries += 1
            size += stored.size
        return {"entries": entries, "bytes": size}

    def _walk(self, namespace: str | None) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """The one walk of the layout: (namespace, item) for every item of every shard
        directory, of one namespace or of all; directories that vanish meanwhile are skipped."""
        for ns_dir in _subdirs(self.root):
            if not is_namespace(ns_dir.name) or namespace not in (None, ns_dir.name):
                continue
            for shard1 in _subdirs(ns_dir.path):
                for shard2 in _subdirs(shard1.path):
                    for item in _scan(shard2.path):
                        yield ns_dir.name, item


def remove_if_unchanged(path: Path, inode: int) -> bool:
    """Unlink `path` only if it is still the file we judged (same inode): another
    process may have replaced it with a fresh entry in the meantime."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
            return True
    except FileNotFoundError:
        pass
    return False


def _scan(path: str | Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            yield from it
    except (FileNotFoundError, NotADirectoryError):
        return


def _subdirs(path: str | Path) -> Iterator[os.DirEntry[str]]:
    return (e for e in _scan(path) if e.is_dir(follow_symlinks=False))
