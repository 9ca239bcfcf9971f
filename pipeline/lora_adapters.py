"""The LoRA adapters loaded into the served pipeline: which are in, and switching sets.

Runs on the engine's thread only (pipeline/engine.py), before each model call.
Adapters are loaded with diffusers' `load_lora_weights` (peft) under a name made
from their content hash, activated with `set_adapters` at the request's scales,
and switched off with `disable_lora` for a request without LoRAs; the base weights
are never touched or reloaded. Loaded adapters stay in an LRU (cachetools) bounded
by count and by bytes (the files' sizes): the least recently used is deleted from
the model first.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from cachetools import LRUCache

from pipeline.errors import RequestInvalid
from pipeline.limits import MAX_LORAS
from pipeline.lora import LoraChoice, LoraSet

log = logging.getLogger(__name__)

DEFAULT_MAX_ADAPTERS = 8
DEFAULT_MAX_ADAPTER_BYTES = 2 << 30


def adapter_name(lora: LoraChoice) -> str:
    """The adapter's name in the model: from its content, so one file under two names
    is loaded once."""
    return f"sha_{lora.sha256[:20]}"


class _Loaded(LRUCache[str, int]):
    """Adapter name -> bytes; evicting an entry deletes the adapter from the model."""

    def __init__(self, max_bytes: int, unload: Any) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda size: size)
        self.unload = unload

    def popitem(self) -> tuple[str, int]:
        name, size = super().popitem()
        self.unload(name)
        return name, size


class Adapters:
    """The adapters of one pipeline (see the module docstring).

    Guarantees: after `apply(pipe, loras)` exactly `loras` are active at their scales
    (none: the base model, bit for bit); at most `max_count` adapters and (past the
    ones one request needs) `max_bytes` stay loaded. Failures: a file diffusers
    cannot load as a Z-Image LoRA, or a set larger than the byte bound, is
    RequestInvalid("loras") naming it, with nothing of it left in the model."""

    def __init__(
        self, max_count: int = DEFAULT_MAX_ADAPTERS, max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES
    ) -> None:
        self.max_count = max(max_count, MAX_LORAS)  # one request's set always fits
        self._pipe: Any = None
        self._loaded = _Loaded(max_bytes, self._unload)
        self.loads = 0  # adapters loaded from files, for tests and stats

    @property
    def loaded(self) -> list[str]:
        """The loaded adapters' names, least recently used first."""
        return list(self._loaded.keys())

    def apply(self, pipe: Any, loras: LoraSet) -> None:
        """Make `loras` the active set of `pipe` (loading what is not loaded yet)."""
        self._pipe = pipe
        if not loras:
            if self._loaded:
                pipe.disable_lora()
            return
        names = [adapter_name(lora) for lora in loras]
        for name in names:  # the set's adapters become the most recently used
            if name in self._loaded:
                self._loaded[name] = self._loaded[name]
        for lora, name in zip(loras, names, strict=True):
            if name not in self._loaded:
                self._load(pipe, lora, name)
        missing = [lora.name for lora, name in zip(loras, names, strict=True) if name not in self._loaded]
        if missing:
            raise RequestInvalid(
                "loras", f"LoRAs {', '.join(missing)} do not fit the LoRA memory bound together; use fewer"
            )
        pipe.enable_lora()
        pipe.set_adapters(names, [lora.scale for lora in loras])

    def _load(self, pipe: Any, lora: LoraChoice, name: str) -> None:
        try:
            pipe.load_lora_weights(str(lora.path), adapter_name=name)
        except Exception as exc:  # peft and diffusers raise ValueError, KeyError, RuntimeError...
            self._unload(name)
            log.warning("LoRA %r (%s) could not be loaded: %s", lora.name, lora.path, exc)
            raise RequestInvalid(
                "loras", f"LoRA {lora.name!r} ({lora.path.name}) could not be loaded as a Z-Image LoRA: {exc}"
            ) from None
        self.loads += 1
        try:
            self._loaded[name] = lora.size
        except ValueError:  # larger than the byte bound alone
            self._unload(name)
            raise RequestInvalid(
                "loras", f"LoRA {lora.name!r} ({lora.size} bytes) is larger than the LoRA memory bound"
            ) from None
        while len(self._loaded) > self.max_count:
            self._loaded.popitem()

    def _unload(self, name: str) -> None:
        """Delete adapter `name` from the model, if it is there."""
        pipe = self._pipe
        if pipe is not None and name in pipe.get_list_adapters().get("transformer", []):
            with contextlib.suppress(Exception):
                pipe.delete_adapters([name])
