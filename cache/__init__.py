"""The storage side: keys and tiers for encoded images. Knows nothing of models."""

from cache.disk import DiskTier
from cache.entry import MEDIA_TYPES, MISS, Entry
from cache.keys import DEFAULT_NAMESPACE, SCHEMA_VERSION, bad_namespace, is_key, is_namespace, make_key
from cache.layered import Hit, LayeredCache, TierUnavailable
from cache.memory import MemoryTier

__all__ = [
    "DEFAULT_NAMESPACE",
    "MEDIA_TYPES",
    "MISS",
    "SCHEMA_VERSION",
    "DiskTier",
    "Entry",
    "Hit",
    "LayeredCache",
    "MemoryTier",
    "TierUnavailable",
    "bad_namespace",
    "is_key",
    "is_namespace",
    "make_key",
]
