"""Cache keys: SHA-256 over canonical JSON.

SHA-256 rather than a fast non-cryptographic hash because the cache can be
shared between replicas (and tenants): a crafted collision must not let one
request read another's image.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

# Bumped whenever what a key covers or how an entry is stored changes, so old
# entries are simply never found again instead of being misread. 2: the record's
# tag covers its header too (and can be an HMAC). 3: unsigned records carry an
# XXH3-128 checksum instead of a SHA-256. 4: the format is out of the key (one
# stored PNG per generation, other encodings under keys of their own) and the key's
# fields are in sections (pipeline/keys.py). 5: records name the key id of their
# secret, and so do Redis keys (cache/keyring.py).
SCHEMA_VERSION = 5

# The namespace of callers who name none (no API keys, no X-Namespace header).
DEFAULT_NAMESPACE = "public"
NAMESPACE_RULE = "1-64 of a-z, 0-9, _ and -"

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def canonical_json(fields: Mapping[str, Any]) -> str:
    """Serialise `fields` the same way every time: sorted keys, no spaces, UTF-8 kept.

    Floats are written by `json`'s shortest round-trip repr, so 0.0 and 0 differ:
    callers normalise numeric types before hashing.
    """
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def make_key(fields: Mapping[str, Any]) -> str:
    """The hex SHA-256 of the canonical JSON of `fields` plus the schema version."""
    payload = canonical_json({"schema": SCHEMA_VERSION, **fields})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def is_key(value: str) -> bool:
    """True for a well-formed key (64 lower-case hex digits): nothing else reaches a tier."""
    return _KEY_RE.fullmatch(value) is not None


def is_namespace(value: str) -> bool:
    """True for a namespace that is safe as a path segment and a Redis key part."""
    return _NAMESPACE_RE.fullmatch(value) is not None


def bad_namespace(value: str, label: str = "namespace") -> str:
    """The one message for a value that is not a namespace: what (`label`), the value, the rule."""
    return f"{label} {value!r} must be {NAMESPACE_RULE}"
