"""The cache secrets: which one signs, which ones a reader accepts, and their key ids.

`--cache-secret` takes a list, newest first: writes sign with the first, reads
accept a record signed with any of them, so a fleet rotates its secret without
losing an entry (add the new one in front everywhere, wait out the TTLs, drop
the old one). Each secret has a key id, a short HMAC of a fixed text under it:
it names the secret in the Redis key and in every record without revealing it,
so processes with different secrets never read, judge or overwrite each other's
Redis entries, and a reader can tell "signed with a secret I do not hold" (kept)
from "damaged or forged" (removed).

Why at least 32 bytes: the HMAC is only as strong as its key is unguessable, and
anyone who can read the shared Redis or the cache directory holds (record, tag)
pairs to test guesses against offline, as fast as they can compute SHA-256.
RFC 2104 (section 3) calls keys shorter than the hash's output length (32 bytes
for SHA-256) "strongly discouraged" as they decrease the security strength;
32 bytes is also the 256 bits of a `secrets.token_urlsafe(32)` (43 characters).
Length is a proxy for entropy, not proof of it: use random bytes, not a phrase.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

MIN_SECRET_BYTES = 32
# The key id of records without a secret (checked by an XXH3 checksum only).
UNSIGNED_KID = "unsigned"
_KID_TEXT = b"zimage cache key id v1"
_KID_HEX = 16  # 64 bits: two random secrets share an id with probability 2^-64


def key_id(secret: bytes) -> str:
    """The key id of `secret`: 16 hex digits of HMAC-SHA256(secret, a fixed text)."""
    return hmac.new(secret, _KID_TEXT, hashlib.sha256).hexdigest()[:_KID_HEX]


def parse_secrets(text: str) -> list[bytes]:
    """`new,old,...` -> the secrets as bytes, newest first. Raises ValueError saying
    which one is too short (under MIN_SECRET_BYTES in UTF-8) or repeated."""
    parts = [part.strip() for part in text.split(",")]
    out: list[bytes] = []
    for place, part in enumerate(parts, 1):
        raw = part.encode()
        which = f"secret {place} of {len(parts)}" if len(parts) > 1 else "the secret"
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(
                f"{which} is {len(raw)} bytes; use at least {MIN_SECRET_BYTES} random bytes, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if raw in out:
            raise ValueError(f"{which} repeats an earlier one")
        out.append(raw)
    return out


@dataclass(frozen=True)
class Keyring:
    """The secrets of one process, newest first; empty: records are unsigned.

    Immutable and thread-safe. `kid` names what this process writes; `secret_for`
    answers for what it may read.
    """

    secrets: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, secrets: Iterable[bytes] | None) -> Keyring:
        return cls(tuple(secrets or ()))

    @property
    def signed(self) -> bool:
        return bool(self.secrets)

    @property
    def writer(self) -> bytes | None:
        """The secret that signs new records (None: unsigned)."""
        return self.secrets[0] if self.secrets else None

    @cached_property
    def kid(self) -> str:
        """The key id of what this process writes."""
        return self.kids[0]

    @cached_property
    def kids(self) -> tuple[str, ...]:
        """The key ids this process reads, the writer's first."""
        return tuple(self._by_kid)

    @cached_property
    def _by_kid(self) -> dict[str, bytes | None]:
        if not self.secrets:
            return {UNSIGNED_KID: None}
        return {key_id(secret): secret for secret in self.secrets}

    def secret_for(self, kid: str) -> bytes | None:
        """The secret of `kid` (None for UNSIGNED_KID without secrets); KeyError when
        this process holds no such secret."""
        return self._by_kid[kid]
