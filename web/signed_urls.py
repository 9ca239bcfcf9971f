"""Signed, expiring image URLs: what OpenAI's `url` hands out when `--api-keys` is
set. Clients that download the URL (a chat front end, `curl`, a browser) do not
send the Bearer token, so the URL itself carries the permission, as OpenAI's own
image URLs do, and expires as theirs do, after an hour.

A URL `/images/<key>.<ext>?ns=<namespace>&expires=<unix s>&sig=<hex>` is accepted
without a token until `expires` when `sig` is the HMAC-SHA256 of namespace, file
name and expiry under the signing key. The key is derived from the whole API-keys
file, so replicas given the same file accept each other's URLs, nobody without
every token can forge one, and changing the file withdraws every URL signed
before."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlencode

# How long a signed URL works (OpenAI's expire after an hour).
SIGNED_URL_TTL_S = 3600
SIGNATURE_PARAMS = ("ns", "expires", "sig")


class UrlSigner:
    """Signs and checks image URLs with one key. Thread-safe (immutable)."""

    def __init__(self, api_keys: Mapping[str, str], ttl_s: int = SIGNED_URL_TTL_S) -> None:
        material = "\n".join(f"{token} {namespace}" for token, namespace in sorted(api_keys.items()))
        self._key = hashlib.sha256(b"zimage signed image urls\n" + material.encode()).digest()
        self.ttl_s = ttl_s

    def _mac(self, namespace: str, name: str, expires: int) -> str:
        message = f"{namespace}\n{name}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, path: str, namespace: str, now: float | None = None) -> str:
        """`path` (`/images/<key>.<ext>`) with the query that lets anyone fetch it,
        in `namespace`, for `ttl_s` from `now`."""
        expires = int(now if now is not None else time.time()) + self.ttl_s
        name = path.rsplit("/", 1)[-1]
        query = urlencode({"ns": namespace, "expires": expires, "sig": self._mac(namespace, name, expires)})
        return f"{path}?{query}"

    def check(self, name: str, params: Mapping[str, str], now: float | None = None) -> str:
        """The namespace a signed URL of file `name` grants; ValueError saying what
        is wrong (missing part, bad signature, expired) otherwise."""
        namespace, expires_s, sig = (params.get(part) for part in SIGNATURE_PARAMS)
        if not namespace or not expires_s or not sig:
            raise ValueError("a signed image URL needs ns, expires and sig; ask for the image again")
        if not expires_s.isdigit() or len(expires_s) > 12:
            raise ValueError("expires is not a time; ask for the image again")
        expires = int(expires_s)
        if not hmac.compare_digest(self._mac(namespace, name, expires), sig):
            raise ValueError("the signature of this image URL does not match; ask for the image again")
        if expires < (now if now is not None else time.time()):
            raise ValueError("this image URL has expired (they work for an hour); ask for the image again")
        return namespace
