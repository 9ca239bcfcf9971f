"""What a tier stores: encoded bytes plus a little metadata, and the miss sentinel."""

from __future__ import annotations

import hashlib
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
