"""What a tier stores: encoded bytes plus a little metadata, and the miss sentinel."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class _Miss:
    """The result of a lookup that found nothing; falsy, and distinct from any stored value."""

    _instance: _Miss | None = None

    def __new__(cls) -> _Miss:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISS"


MISS = _Miss()


@dataclass(frozen=True)
class Entry:
    """One cached result: the exact bytes served to users and JSON-able metadata.

    `ext` names the encoding (`png`, `jpeg`, `webp`); `meta` holds what the
    producer wants back on a hit (seed, size, ...). Tiers never look inside
    `data` beyond checking its checksum.
    """

    data: bytes
    ext: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.ext]

    @property
    def size(self) -> int:
        """Bytes this entry costs in memory, roughly: the payload dominates."""
        return len(self.data) + 256

    def checksum(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# Record layout, on disk and in Redis: MAGIC | u32 header length | header JSON | payload.
# The header carries the key, namespace, size and SHA-256 of the payload, so a
# record that was truncated, overwritten or stored under the wrong name is detected.
MAGIC = b"ZIMGC\x00\x01\n"
_LEN = struct.Struct(">I")
_PREFIX = len(MAGIC) + _LEN.size


class CorruptEntry(Exception):
    """A stored record that does not hold a valid entry for its key."""


def encode_record(namespace: str, key: str, entry: Entry) -> bytes:
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


def decode_record(blob: bytes, namespace: str, key: str) -> Entry:
    """Parse and verify a stored record; raises CorruptEntry naming what is wrong."""
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
        raise CorruptEntry("key or namespace does not match where it is stored")
    if header.get("ext") not in MEDIA_TYPES:
        raise CorruptEntry("unknown encoding")
    if header.get("size") != len(data):
        raise CorruptEntry(f"truncated: {len(data)} of {header.get('size')} bytes")
    if hashlib.sha256(data).hexdigest() != header.get("sha256"):
        raise CorruptEntry("checksum mismatch")
    return Entry(data=data, ext=header["ext"], meta=header.get("meta") or {})
