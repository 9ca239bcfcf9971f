"""Other encodings of stored images: looked up, else made from the stored PNG once,
off the event loop, and stored beside it.

A generation is stored once, losslessly (pipeline/encoding.py STORED_FORMAT). A
JPEG or WebP is made from those bytes when first asked for and stored in every
tier under its own key (pipeline/keys.py derived_key): making one from a
1024x1024 PNG takes about 30 ms (JPEG) or 180 ms (WebP) of CPU, reading a stored
copy back a fraction of a millisecond from memory, disk or Redis, for 13-15% of
the PNG's bytes (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import time

from cache import MISS, Entry, Hit, LayeredCache
from cache.entry import _Miss
from pipeline.encoding import STORED_FORMAT, transcode
from pipeline.keys import derived_key


def timing_name(ext: str) -> str:
    """The Server-Timing name of making the `ext` encoding (`encode_jpeg`)."""
    return f"encode_{ext}"


class Encodings:
    """The encodings of the entries of `cache`, by format.

    Guarantees: the stored image's bytes are served as they are for its own format;
    another format is read from the cache, else made once per process at a time
    (callers asking for the same one together share the work) on a thread, stored in
    every tier (a failing tier is skipped, as for any store), then served. A hit
    reports the tier of what it found, the stored encoding or the image it was made
    from; `timings` name the encoding's seconds when one was made.
    """

    def __init__(self, cache: LayeredCache) -> None:
        self.cache = cache
        self._making: dict[tuple[str, str], asyncio.Future[Entry]] = {}

    async def lookup(self, namespace: str, key: str, ext: str) -> tuple[Hit | _Miss, dict[str, float]]:
        """The `ext` encoding of the stored image `key`, from the cache or made from it
        there; MISS when neither is stored. Returns it with the timings of its making."""
        return (await self.lookup_many(namespace, [key], ext))[0]

    async def lookup_many(
        self, namespace: str, keys: list[str], ext: str
    ) -> list[tuple[Hit | _Miss, dict[str, float]]]:
        """`lookup` of each key, in order, the lookups of one kind together."""
        if ext == STORED_FORMAT:
            return [(hit, {}) for hit in await self.cache.aget_many(namespace, keys)]
        derived = await self.cache.aget_many(namespace, [derived_key(k, ext) for k in keys])
        found: list[tuple[Hit | _Miss, dict[str, float]]] = [(hit, {}) for hit in derived]
        todo = [i for i, hit in enumerate(derived) if not isinstance(hit, Hit)]
        if not todo:
            return found
        sources = await self.cache.aget_many(namespace, [keys[i] for i in todo])
        made = await asyncio.gather(
            *(
                self.encode(namespace, keys[i], source.entry, ext)
                for i, source in zip(todo, sources, strict=True)
                if isinstance(source, Hit)
            )
        )
        made_iter = iter(made)
        for i, source in zip(todo, sources, strict=True):
            if isinstance(source, Hit):
                entry, timings = next(made_iter)
                found[i] = (Hit(entry, source.tier), timings)
            else:
                found[i] = (MISS, {})
        return found

    async def encode(
        self, namespace: str, key: str, stored: Entry, ext: str
    ) -> tuple[Entry, dict[str, float]]:
        """`stored` (the entry of `key`) as `ext`: itself for its own format, else made,
        stored under derived_key, and returned with `{encode_<ext>: seconds}`."""
        if ext == stored.ext:
            return stored, {}
        name = (namespace, derived_key(key, ext))
        started = time.perf_counter()
        making = self._making.get(name)
        if making is None:
            # A task of its own, not the caller's: a caller that goes away does not
            # cancel the work others wait for (the thread would finish anyway).
            making = asyncio.ensure_future(asyncio.to_thread(self._make_and_store, name, stored, ext))
            self._making[name] = making
            making.add_done_callback(lambda _: self._making.pop(name, None))
        entry = await asyncio.shield(making)
        return entry, {timing_name(ext): time.perf_counter() - started}

    async def convert(
        self, entry: Entry, ext: str, timings: dict[str, float]
    ) -> tuple[Entry, dict[str, float]]:
        """`entry` as `ext`, made on a thread and stored nowhere (for a bypass), with
        `timings` plus the encoding's seconds."""
        if ext == entry.ext:
            return entry, timings
        started = time.perf_counter()
        data = await asyncio.to_thread(transcode, entry.data, ext)
        return Entry(data=data, ext=ext, meta=entry.meta), {
            **timings,
            timing_name(ext): time.perf_counter() - started,
        }

    def _make_and_store(self, name: tuple[str, str], stored: Entry, ext: str) -> Entry:
        entry = Entry(data=transcode(stored.data, ext), ext=ext, meta=stored.meta)
        self.cache.put(*name, entry)
        return entry
