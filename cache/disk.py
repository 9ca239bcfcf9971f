"""L2: one file per entry in sharded directories under the cache directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cache.entry import MEDIA_TYPES, MISS, Entry, _Miss

log = logging.getLogger(__name__)

# File layout: MAGIC | u32 header length | header JSON | payload.
# The header carries the key, namespace, size and SHA-256 of the payload, so a
# file that was truncated, overwritten or copied to the wrong name is detected.
MAGIC = b"ZIMGC\x00\x01\n"
_LEN = struct.Struct(">I")
_PREFIX = len(MAGIC) + _LEN.size
TEMP_SUFFIX = ".tmp"


class CorruptEntry(Exception):
    """A file under the cache directory that does not hold a valid entry for its name."""


def encode_file(namespace: str, key: str, entry: Entry) -> bytes:
    header = {
        "key": key,
        "namespace": namespace,
        "ext": entry.ext,
        "size": len(entry.data),
        "sha256": entry.checksum(),
        "created": time.time(),
        "meta": entry.meta,
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + _LEN.pack(len(raw)) + raw + entry.data


def decode_file(blob: bytes, namespace: str, key: str) -> Entry:
    """Parse and verify a file's bytes; raises CorruptEntry naming what is wrong."""
    if len(blob) < _PREFIX or not blob.startswith(MAGIC):
        raise CorruptEntry("bad magic")
    (header_len,) = _LEN.unpack_from(blob, len(MAGIC))
    try:
        header = json.loads(blob[_PREFIX : _PREFIX + header_len])
    except ValueError as exc:
        raise CorruptEntry(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptEntry("unreadable header")
    data = blob[_PREFIX + header_len :]
    if header.get("key") != key or header.get("namespace") != namespace:
        raise CorruptEntry("key or namespace does not match the file name")
    if header.get("ext") not in MEDIA_TYPES:
        raise CorruptEntry("unknown encoding")
    if header.get("size") != len(data):
        raise CorruptEntry(f"truncated: {len(data)} of {header.get('size')} bytes")
    if hashlib.sha256(data).hexdigest() != header.get("sha256"):
        raise CorruptEntry("checksum mismatch")
    return Entry(data=data, ext=header["ext"], meta=header.get("meta") or {})


class DiskTier:
    """Entries as files `<root>/<namespace>/<k0k1>/<k2k3>/<key>`.

    Guarantees: a write goes to a temp file in the target directory, is fsynced
    and renamed over the final name, so readers in any thread or process see a
    whole old entry, a whole new one, or none; a failed write (disk full, ...)
    removes its temp file and raises OSError for the caller to count. Every read
    verifies the checksum; a corrupt file is removed and reported as a miss.
    Survives restarts. Bounds (size, age) are enforced by maintenance, not here.
    """

    name = "disk"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.corrupt_dropped = 0

    def path_for(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / key[2:4] / key

    def get(self, namespace: str, key: str) -> Entry | _Miss:
        path = self.path_for(namespace, key)
        try:
            with open(path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                blob = f.read()
        except FileNotFoundError:
            return MISS
        try:
            return decode_file(blob, namespace, key)
        except CorruptEntry as exc:
            log.warning("disk cache: dropping corrupt entry %s (%s)", path, exc)
            self.corrupt_dropped += 1
            self._remove_if_same(path, inode)
            return MISS

    def put(self, namespace: str, key: str, entry: Entry) -> None:
        path = self.path_for(namespace, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode_file(namespace, key, entry))
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

    def iter_files(self) -> Iterator[os.DirEntry[str]]:
        """Every committed entry file (temp files excluded), in no particular order."""
        for ns_dir in _scandir(self.root):
            for shard1 in _scandir(ns_dir.path):
                for shard2 in _scandir(shard1.path):
                    for item in _scandir(shard2.path):
                        if item.is_file() and not item.name.startswith("."):
                            yield item

    def stats(self) -> dict[str, int]:
        entries = size = 0
        for item in self.iter_files():
            with contextlib.suppress(FileNotFoundError):
                size += item.stat().st_size
                entries += 1
        return {"entries": entries, "bytes": size}

    @staticmethod
    def _remove_if_same(path: Path, inode: int) -> None:
        # Another process may have replaced the corrupt file with a good one
        # since we read it; only remove the file we actually judged.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)


def _scandir(path: str | Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            yield from (e for e in it if e.is_dir() or e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return
