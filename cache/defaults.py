"""Where the disk cache lives and how large and old it may grow, by default.

Defaults are data (as python-diskcache's DEFAULT_SETTINGS): the service's
settings, `python -m cache` and the shipped cron line all read these, so a
cache directory found by one is the one the others use.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CACHE_DIR = Path("~/.cache/z-image-turbo")
DEFAULT_DISK_MAX_SIZE = "20GiB"
DEFAULT_DISK_MAX_AGE = "7d"
DEFAULT_REDIS_TTL = "7d"


def images_dir(cache_dir: Path) -> Path:
    """The disk tier's root inside a cache directory (beside models/ and compile/)."""
    return cache_dir.expanduser() / "images"
