"""A model's fingerprint by content: the SHA-256 of every file the pipeline reads.

Two directories with the same files (by content) have the same fingerprint,
whatever their names, paths, mtimes, download dates or hub commits; one changed
byte of a weight gives another. A file's digest comes, cheapest first, from:

1. its Hugging Face cache blob: a snapshot's file is a symlink to
   `blobs/<sha256>` for every LFS file (the weights), so the name is the digest
   and nothing is read;
2. the digest cache (`DigestCache`), a JSON file beside the cache directory
   keyed by path, size, mtime_ns and inode, so a restart reads no weight bytes;
3. reading the file (about 1-2 GB/s: tens of seconds, once, for a 30 GB model
   in a plain directory), then remembered in the digest cache.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Files download tools keep beside a model, none of which the pipeline reads:
# `hf download --local-dir` writes .cache/huggingface/download/*.metadata (with
# timestamps) and *.lock files; hashing them would change every key on re-download.
_BOOKKEEPING = ("*.metadata", "*.lock", "*.incomplete")
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
# Reading more than this to fingerprint a model is worth a log line (it happens once).
_SAY_READING = 1 << 30


def is_bookkeeping(rel: str) -> bool:
    """Whether a path (relative to the model directory) is a download tool's or a hidden file."""
    parts = rel.split("/")
    return any(part.startswith(".") for part in parts) or any(
        fnmatch.fnmatch(parts[-1], pattern) for pattern in _BOOKKEEPING
    )


def pipeline_patterns(model_index: Path) -> list[str]:
    """The files ZImagePipeline.from_pretrained reads, as glob patterns relative to the
    model directory: model_index.json and each component's folder (config, weights,
    tokenizer files); not the README, sample images or other repositories' extras."""
    index = json.loads(model_index.read_text())
    components = [name for name, value in index.items() if isinstance(value, list) and value[0] is not None]
    return ["model_index.json", *(f"{name}/*" for name in sorted(components))]


class DigestCache:
    """SHA-256 digests of files, remembered in one JSON file by (path, size, mtime_ns,
    inode): a file that was rewritten, replaced or touched is hashed again.

    Guarantees: the file is replaced atomically (temp file and rename), so a reader
    sees an old or a new whole version; an unreadable or damaged file is ignored (the
    digests are computed again) and an unwritable one only costs the next start a
    re-read, never an error. Thread-safe; processes sharing it may each rewrite it
    (the last one's entries win: each is right for the files it names).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._read()
        self._dirty = False

    def digest(self, file: Path) -> str:
        """The hex SHA-256 of `file`'s content, from the cache when its stat matches."""
        real = os.path.realpath(file)
        st = os.stat(real)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        with self._lock:
            known = self._entries.get(real)
        if known is not None and all(known.get(k) == v for k, v in stamp.items()):
            return str(known["sha256"])
        digest = file_sha256(Path(real))
        with self._lock:
            self._entries[real] = {**stamp, "sha256": digest}
            self._dirty = True
        return digest

    def save(self) -> None:
        """Write the digests learnt since loading, if any (failures are logged only)."""
        with self._lock:
            if not self._dirty:
                return
            payload = json.dumps(self._entries, indent=0, sort_keys=True)
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(payload)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not save model digests to %s (%s); computed again next start", self.path, exc)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def blob_digest(file: Path) -> str | None:
    """The SHA-256 a Hugging Face cache symlink names (`../../blobs/<sha256>`), or None
    for any other file (a regular file, or a small git blob named by its SHA-1)."""
    if not file.is_symlink():
        return None
    name = Path(os.readlink(file)).name
    return name if _SHA256_NAME.fullmatch(name) else None


def fingerprint_dir(path: Path, digests: DigestCache | None = None) -> str:
    """`sha256:` + SHA-256 over (relative path, content SHA-256) of every file of the
    model directory the pipeline reads (pipeline_patterns), in order. Download tools'
    bookkeeping (.cache/, *.metadata, *.lock), hidden files, READMEs and anything else
    the pipeline does not read are left out, so re-downloading or copying the same
    model keeps every key. `digests` (default: none, every file is read) spares
    re-reading files seen before."""
    patterns = pipeline_patterns(path / "model_index.json")
    listing = hashlib.sha256()
    to_read = 0
    files = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if is_bookkeeping(rel) or not any(fnmatch.fnmatch(rel, pattern) for pattern in patterns):
            continue
        files.append((rel, file))
        if blob_digest(file) is None:
            to_read += file.stat().st_size
    if to_read > _SAY_READING:
        log.info("fingerprinting %s: up to %.1f GB to read, once", path, to_read / 1e9)
    for rel, file in files:
        digest = blob_digest(file) or (digests.digest(file) if digests else file_sha256(file))
        listing.update(f"{rel}\0{digest}\n".encode())
    if digests is not None:
        digests.save()
    return "sha256:" + listing.hexdigest()
