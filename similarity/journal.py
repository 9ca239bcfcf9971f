"""A namespace's index kept on disk: an append-only file of checked records.

Layout: a file header (`MAGIC`, then one JSON line naming the model and the
vector size), then records `u32 length | JSON {"key","prompt"} | float32 vector
| XXH3-64 of everything before it in the record`. Appends are one `write` to a
file opened with O_APPEND, so processes sharing the cache directory can all
append and each sees the others' records (`read` from where it stopped).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

MAGIC = b"ZIMGSIM1\n"
_LEN = struct.Struct(">I")
_SUM = 8
MAX_HEADER = 64 * 1024  # a prompt is at most a few KB; more is damage


class JournalDamaged(Exception):
    """The file is not a journal for this model, or a record in it fails its check."""


@dataclass(frozen=True)
class Record:
    key: str
    prompt: str
    vector: np.ndarray


class Journal:
    """One namespace's records at `path`, for vectors of `model` with `dim` floats.

    Guarantees: `append` writes a whole record in one `write` (O_APPEND), so
    concurrent appenders in several processes do not interleave records; a crash
    mid-write leaves a partial record at the end, which `read` leaves unread (a
    later append after it makes the file damaged: JournalDamaged, and the
    caller rebuilds). `replace` writes a new file beside it and renames it over
    the old one, so a reader sees the old file or the new one whole; a reader of
    the old one notices (`read` compares the inode) and starts again from the top.
    An OSError (disk full, read-only) is raised for the caller to log: the index
    in memory goes on without its file.
    """

    def __init__(self, path: Path, model: str, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.head = MAGIC + json.dumps({"model": model, "dim": dim}).encode() + b"\n"
        self._inode: int | None = None
        self._offset = 0

    def exists(self) -> bool:
        return self.path.exists()

    def append(self, record: Record) -> None:
        """Add one record at the end (creating the file, with its header, if needed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                os.write(fd, self.head)  # a racing creator may write a second header: caught as damage
            os.write(fd, self._encode(record))
        finally:
            os.close(fd)

    def read(self) -> list[Record]:
        """The records added since the last `read` (all of them the first time, or
        after the file was replaced). JournalDamaged if the file is not for this
        model or a record fails its check; FileNotFoundError if there is none."""
        with self.path.open("rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            if inode != self._inode:
                head = f.read(len(self.head))
                if head != self.head:
                    raise JournalDamaged(f"{self.path}: not a journal of this model (header {head[:40]!r})")
                self._inode, self._offset = inode, len(self.head)
            f.seek(self._offset)
            data = f.read()
        records, used = self._decode(data)
        self._offset += used
        return records

    def replace(self, records: Iterable[Record]) -> None:
        """Write a whole new file holding exactly `records` (a rebuild), atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with temp.open("wb") as f:
                f.write(self.head)
                for record in records:
                    f.write(self._encode(record))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)
        self._inode, self._offset = None, 0

    def _encode(self, record: Record) -> bytes:
        header = json.dumps({"key": record.key, "prompt": record.prompt}, ensure_ascii=False).encode()
        body = _LEN.pack(len(header)) + header + np.asarray(record.vector, dtype="<f4").tobytes()
        return body + xxhash.xxh3_64_digest(body)

    def _decode(self, data: bytes) -> tuple[list[Record], int]:
        """The whole records at the start of `data` and the bytes they take; a
        partial one at the end is left (being written, or cut by a crash)."""
        records, at, vector_bytes = [], 0, 4 * self.dim
        while len(data) - at >= _LEN.size:
            (size,) = _LEN.unpack_from(data, at)
            if size > MAX_HEADER:
                raise JournalDamaged(f"{self.path}: a record at byte {self._offset + at} claims {size} bytes")
            end = at + _LEN.size + size + vector_bytes
            if len(data) < end + _SUM:
                break
            if xxhash.xxh3_64_digest(data[at:end]) != data[end : end + _SUM]:
                raise JournalDamaged(
                    f"{self.path}: the record at byte {self._offset + at} fails its checksum"
                )
            try:
                header = json.loads(data[at + _LEN.size : at + _LEN.size + size])
                key, prompt = str(header["key"]), str(header["prompt"])
            except (ValueError, KeyError, TypeError) as exc:
                raise JournalDamaged(
                    f"{self.path}: an unreadable record at byte {self._offset + at}"
                ) from exc
            vector = np.frombuffer(data, dtype="<f4", count=self.dim, offset=end - vector_bytes).astype(
                np.float32
            )
            records.append(Record(key, prompt, vector))
            at = end + _SUM
        return records, at
