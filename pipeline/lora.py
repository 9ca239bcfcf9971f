"""LoRAs a request may name: the files under `--lora-dir` (and the tiny model's demo
LoRA), each known by the SHA-256 of its content, and how a request names them.

A request names LoRAs by file name (without `.safetensors`); the cache key holds
each one's content hash and scale, never its name (pipeline/keys.py), so renaming a
file keeps its images and replacing its content makes new ones. The set is
canonical: sorted by hash, one content named twice merged (scales added), a LoRA at
scale 0 left out (it changes nothing), so the same set written in another order is
the same key.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline import limits
from pipeline.errors import RequestInvalid
from pipeline.fingerprint import DigestCache
from pipeline.tiny_model import DEMO_LORA_NAME, ensure_demo_lora

LORA_SUFFIX = ".safetensors"
# A1111's extra-network syntax (modules/extra_networks.py `re_extra_net`): `<kind:args>`,
# args separated by ':'; for `lora` (and its alias `lyco`) the name, then the multiplier.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = ("lora", "lyco")


class LoraSpec(BaseModel):
    """One LoRA as a request names it: its file name and scale."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="A LoRA's name as `/api/info` lists it (its file name without `.safetensors`).",
        json_schema_extra={"minLength": 1, "maxLength": 200},
    )
    scale: float = Field(
        limits.DEFAULT_LORA_SCALE,
        description=f"How strongly it applies, -{limits.MAX_LORA_SCALE:g}..{limits.MAX_LORA_SCALE:g} "
        "(0 leaves it out).",
        json_schema_extra={"minimum": -limits.MAX_LORA_SCALE, "maximum": limits.MAX_LORA_SCALE},
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or len(v) > 200 or "/" in v or "\x00" in v:
            raise ValueError(f"LoRA name {v[:200]!r} is not a name /api/info lists; see `loras` there")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if not math.isfinite(v) or abs(v) > limits.MAX_LORA_SCALE:
            raise ValueError(
                f"LoRA scale must be a finite number between -{limits.MAX_LORA_SCALE:g} and "
                f"{limits.MAX_LORA_SCALE:g} (got {v})"
            )
        return v


def loras_field() -> Any:
    """The `loras` field of the request models: up to limits.MAX_LORAS."""
    return Field(
        default_factory=list,
        description=f'LoRAs to apply, up to {limits.MAX_LORAS}: `[{{"name": ..., "scale": 0.8}}]`; '
        "`/api/info` lists the names. Part of the cache key by content hash and scale.",
        json_schema_extra={"maxItems": limits.MAX_LORAS},
    )


def check_lora_count(specs: Sequence[LoraSpec]) -> None:
    """ValueError when a request names more than limits.MAX_LORAS LoRAs, or one twice."""
    if len(specs) > limits.MAX_LORAS:
        raise ValueError(f"at most {limits.MAX_LORAS} LoRAs per request (got {len(specs)})")
    names = [s.name for s in specs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"LoRA {twice[0]!r} is named twice; name each LoRA once")


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA resolved for a request: its file, content hash, size and scale, and the
    short hash A1111 writes in an image's parameters (`a1111_short_hash`)."""

    name: str
    path: Path
    sha256: str
    size: int
    scale: float
    a1111_hash: str = ""

    def key_fields(self) -> dict[str, Any]:
        """What the cache key holds of it: content and scale, never the name."""
        return {"sha256": self.sha256, "scale": self.scale}


LoraSet = tuple[LoraChoice, ...]


def lora_inputs(loras: LoraSet) -> dict[str, Any]:
    """The key's `inputs` entry for `loras` (pipeline/keys.py); empty for none."""
    return {"loras": [lora.key_fields() for lora in loras]} if loras else {}


def lora_set_key(loras: LoraSet) -> tuple[tuple[str, float], ...]:
    """What batching compares: the LoRA set by content and scale."""
    return tuple((lora.sha256, lora.scale) for lora in loras)


def parse_lora_arg(text: str) -> LoraSpec:
    """`name:0.8` (or `name`, scale 1) as `/run`'s `lora=` takes it; ValueError naming it."""
    name, sep, scale = text.rpartition(":")
    if not sep:
        name, scale = text, str(limits.DEFAULT_LORA_SCALE)
    try:
        value = float(scale)
    except ValueError:
        raise ValueError(f"lora {text!r}: the scale after ':' must be a number, e.g. {name}:0.8") from None
    return LoraSpec(name=name, scale=value)


def split_prompt_loras(prompt: str) -> tuple[str, list[LoraSpec]]:
    """A1111's prompt syntax: `<lora:name:0.8>` tags taken out of the prompt, as A1111
    does (every `<kind:args>` tag is removed from the text; `lora` and `lyco` ones name
    a LoRA, the multiplier defaulting to 1). ValueError for a bad multiplier."""
    specs: list[LoraSpec] = []
    for kind, args in _EXTRA_NETWORK.findall(prompt):
        if kind not in _LORA_KINDS:
            continue
        parts = args.split(":")
        try:
            scale = float(parts[1]) if len(parts) > 1 else limits.DEFAULT_LORA_SCALE
        except ValueError:
            raise ValueError(
                f"<{kind}:{args}>: the multiplier must be a number, e.g. <lora:{parts[0]}:0.8>"
            ) from None
        specs.append(LoraSpec(name=parts[0], scale=scale))
    return _EXTRA_NETWORK.sub("", prompt), specs


class LoraCatalog:
    """The LoRAs that can be used: `*.safetensors` directly in `directory`, and with the
    demo model its demo LoRA (built under `models_dir` on first use).

    Guarantees: the directory is listed on every call, so a file added or removed
    is seen at once without a restart; each file's SHA-256 is read once and kept in
    `digests` by path, size, mtime_ns and inode (pipeline/fingerprint.py), so a
    replaced file is hashed again. A file that is not a readable safetensors file is
    refused with RequestInvalid naming it; nothing else fails. Thread-safe."""

    def __init__(self, directory: Path | None, models_dir: Path, digests: DigestCache) -> None:
        self.directory = directory
        self.models_dir = models_dir
        self.digests = digests
        # sha256 -> (why unreadable, None: fine; its A1111 short hash)
        self._checked: dict[str, tuple[str | None, str]] = {}
        self._lock = threading.Lock()

    def files(self, demo: bool) -> dict[str, Path]:
        """Name -> file of every usable LoRA, sorted by name."""
        found: dict[str, Path] = {}
        if self.directory is not None and self.directory.is_dir():
            for path in sorted(self.directory.iterdir()):
                if path.suffix == LORA_SUFFIX and path.is_file() and not path.name.startswith("."):
                    found[path.stem] = path
        if demo:
            found.setdefault(DEMO_LORA_NAME, ensure_demo_lora(self.models_dir))
        return dict(sorted(found.items()))

    def listing(self, demo: bool) -> list[dict[str, Any]]:
        """What `/api/info` and `/sdapi/v1/loras` show: name, file name (not the server's
        path), size; nothing is hashed."""
        return [{"name": n, "file": p.name, "size": p.stat().st_size} for n, p in self.files(demo).items()]

    def resolve(self, specs: Sequence[LoraSpec], demo: bool) -> LoraSet:
        """The canonical LoRA set of a request (see the module docstring). RequestInvalid
        ("loras") naming an unknown LoRA (and the known ones) or an unreadable file."""
        if not specs:
            return ()
        try:
            check_lora_count(specs)
        except ValueError as exc:
            raise RequestInvalid("loras", str(exc)) from None
        files = self.files(demo)
        chosen = []
        for spec in specs:
            path = files.get(spec.name)
            if path is None:
                known = ", ".join(files) or f"none (set --lora-dir to a folder of {LORA_SUFFIX} files)"
                raise RequestInvalid("loras", f"unknown LoRA {spec.name!r}; available: {known}")
            if spec.scale == 0:
                continue
            sha256 = self.digests.digest(path)
            short = self._check(spec.name, path, sha256)
            chosen.append(LoraChoice(spec.name, path, sha256, path.stat().st_size, float(spec.scale), short))
        self.digests.save()
        # One content under two names is one LoRA at the sum of the scales (the same update).
        merged: dict[str, LoraChoice] = {}
        for choice in chosen:
            if (known := merged.get(choice.sha256)) is not None:
                choice = replace(known, scale=known.scale + choice.scale)
            merged[choice.sha256] = choice
        return tuple(merged[sha] for sha in sorted(merged) if merged[sha].scale != 0)

    def _check(self, name: str, path: Path, sha256: str) -> str:
        """The file's A1111 short hash; RequestInvalid when `path` is not a safetensors
        file (it is read once per content)."""
        with self._lock:
            known = sha256 in self._checked
            problem, short = self._checked.get(sha256, (None, ""))
        if not known:
            from safetensors import safe_open

            try:
                with safe_open(path, framework="pt") as f:
                    problem = None if list(f.keys()) else "it holds no tensors"
                short = a1111_short_hash(path) if problem is None else ""
            except Exception as exc:  # safetensors raises its own error types for a bad header
                problem = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._checked[sha256] = (problem, short)
        if problem is not None:
            raise RequestInvalid(
                "loras", f"LoRA {name!r} ({path.name}) is not a readable LoRA file: {problem}"
            )
        return short


def a1111_short_hash(path: Path) -> str:
    """The hash by which A1111 names a safetensors LoRA in an image's `Lora hashes`
    (and Civitai finds it): the first 12 hex digits of the SHA-256 of the file's
    tensor data, its JSON header left out (sd-scripts' `addnet_hash_safetensors`),
    so that editing the file's metadata keeps it. OSError when unreadable."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]
