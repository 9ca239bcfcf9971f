"""The prompts of a namespace's stored entries: what a lost index is rebuilt from."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from cache.disk import DiskTier
from cache.entry import CorruptEntry, decode_record

# The entry metadata fields (written by the generation service) holding the canonical
# prompt and the served model's scope (see NearRepeats).
PROMPT_FIELD, SCOPE_FIELD = "prompt", "near_scope"


def disk_prompts(disk: DiskTier, ext: str) -> Callable[[str, str], Iterator[tuple[str, str]]]:
    """`stored_prompts` for NearRepeats: (key, prompt) of every entry file of a
    namespace whose record checks out, holds an image encoded as `ext` (the stored
    format: other encodings of the same image are copies under other keys), and
    carries its prompt, made in `scope`. Reads the files
    without marking them used (the pruner's least-recently-used order stays as it
    was); damaged or unverifiable files are skipped (the disk tier drops them when
    they are asked for)."""

    def prompts(namespace: str, scope: str) -> Iterator[tuple[str, str]]:
        for stored in disk.files(namespace):
            with contextlib.suppress(OSError, CorruptEntry):
                entry = decode_record(stored.path.read_bytes(), namespace, stored.key, disk.keyring)
                prompt = entry.meta.get(PROMPT_FIELD)
                if entry.ext == ext and isinstance(prompt, str) and entry.meta.get(SCOPE_FIELD) == scope:
                    yield stored.key, prompt

    return prompts
