"""The prompts of a namespace's stored entries: what a lost index is rebuilt from."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from cache.disk import DiskTier
from cache.entry import CorruptEntry, decode_record

# The entry metadata field holding the canonical prompt (written by the generation service).
PROMPT_FIELD = "prompt"


def disk_prompts(disk: DiskTier) -> Callable[[str], Iterator[tuple[str, str]]]:
    """`stored_prompts` for NearRepeats: (key, prompt) of every entry file of a
    namespace whose record checks out and carries its prompt. Reads the files
    without marking them used (the pruner's least-recently-used order stays as it
    was); damaged or unverifiable files are skipped (the disk tier drops them when
    they are asked for)."""

    def prompts(namespace: str) -> Iterator[tuple[str, str]]:
        for stored in disk.files(namespace):
            with contextlib.suppress(OSError, CorruptEntry):
                entry = decode_record(stored.path.read_bytes(), namespace, stored.key, disk.secret)
                prompt = entry.meta.get(PROMPT_FIELD)
                if isinstance(prompt, str):
                    yield stored.key, prompt

    return prompts
