"""Cache secrets across replicas: server processes with different secrets on one real
redis-server never fight over an entry, and a rotation loses nothing."""

from __future__ import annotations

from pathlib import Path

from cache import SCHEMA_VERSION
from cache.keyring import key_id
from tests.conftest import RedisServer, Server, generations

OLD, NEW, OTHER = ("old-fleet-secret-", "new-fleet-secret-", "another-fleets-secret-")
OLD, NEW, OTHER = (s.ljust(40, "x") for s in (OLD, NEW, OTHER))


def generate(server: Server, prompt: str):
    resp = server.client.post("/generate", json={"prompt": prompt, "width": 64, "height": 64, "seed": 3})
    assert resp.status_code == 200, resp.text
    return resp


def forget_disk(server_root: Path) -> None:
    """Remove a replica's disk entries, so its next lookup reaches Redis."""
    for path in (server_root / "images").rglob("*"):
        if path.is_file():
            path.unlink()


def test_fleets_with_different_secrets_share_a_redis_and_rotate_without_loss(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()

    def replica(name: str, secret: str) -> Server:
        return Server(
            tmp_path / name,
            "--memory-cache-mb",
            "0",
            "--redis-url",
            redis_server.url,
            env={"ZIMAGE_CACHE_SECRET": secret},
        )

    def stored(secret: str, key: str) -> bytes | None:
        return client.get(f"zimage:v{SCHEMA_VERSION}:{key_id(secret.split(',')[0].encode())}:public:{key}")

    a, b = replica("a", OLD), replica("b", OTHER)
    servers = [a, b]
    try:
        a.wait_ready(), b.wait_ready()
        # 1. Fleet A makes an image; fleet B, with another secret, cannot check A's
        #    entry, so it makes its own under its own key id, and leaves A's alone.
        made_a = generate(a, "a shared redis")
        key = made_a.headers["x-key"]
        record_a = stored(OLD, key)
        assert record_a is not None
        made_b = generate(b, "a shared redis")
        assert (made_b.headers["x-key"], made_b.headers["x-cache"]) == (key, "miss")
        assert stored(OTHER, key) is not None and stored(OLD, key) == record_a
        # Each fleet then hits its own entry in Redis, never the other's.
        forget_disk(tmp_path / "a")
        forget_disk(tmp_path / "b")
        assert generate(a, "a shared redis").headers["x-cache"] == "redis"
        assert generate(b, "a shared redis").headers["x-cache"] == "redis"
        assert stored(OLD, key) == record_a  # never rewritten, never deleted

        # 2. Rotation: a replica of fleet A restarts with a new secret in front of
        #    the old one. Everything A made is still a hit; what it makes now is
        #    signed with the new secret, which A's old replicas leave alone.
        c = replica("c", f"{NEW},{OLD}")
        servers.append(c)
        c.wait_ready()
        hit = generate(c, "a shared redis")
        assert hit.headers["x-cache"] == "redis" and hit.content == made_a.content
        made_c = generate(c, "after the rotation")
        new_key = made_c.headers["x-key"]
        assert made_c.headers["x-cache"] == "miss" and stored(NEW, new_key) is not None
        assert stored(OLD, new_key) is None
        assert generate(a, "after the rotation").headers["x-cache"] == "miss"  # A lacks NEW
        forget_disk(tmp_path / "c")
        assert generate(c, "after the rotation").headers["x-cache"] == "redis"  # its own, NEW's
        assert stored(OLD, key) == record_a  # still not rewritten by anyone

        # 3. Nothing unverified is served: a damaged entry under a key id C holds is
        #    dropped and made again, by C as by A.
        damaged = bytearray(record_a)
        damaged[-100] ^= 0xFF
        client.set(f"zimage:v{SCHEMA_VERSION}:{key_id(OLD.encode())}:public:{key}", bytes(damaged))
        forget_disk(tmp_path / "c")
        before = generations(c)
        again = generate(c, "a shared redis")
        assert again.headers["x-cache"] == "miss" and generations(c) == before + 1
        assert again.content == made_a.content
        assert "redis cache: dropping corrupt entry" in c.log()
        # Only that one damaged record was ever judged corrupt, by anyone.
        assert "dropping corrupt entry" not in a.log() + b.log()
    finally:
        for server in servers:
            server.stop()
