"""Which model to serve, where its files are, its fingerprint, and loading it."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.tiny_model import TINY_MODEL_ID, ensure_tiny_model

log = logging.getLogger(__name__)

HUB_ID = "Tongyi-MAI/Z-Image-Turbo"
# Files up to this size are fingerprinted by content; larger ones (weights) by
# name and size, so fingerprinting 30 GB of weights stays instant.
_HASH_CONTENT_LIMIT = 1 << 20
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class ModelIdentity:
    """Everything about the served model that the cache key and the UI need,
    known before the weights are loaded."""

    model_id: str
    fingerprint: str
    path: Path
    device: str
    dtype: str
    demo: bool
    min_size: int
    max_size: int = 2048


def pick_device() -> tuple[str, str]:
    """(device, dtype): CUDA with bfloat16 when present (fp16 gives NaN images with
    this model), else the CPU with float32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", "bfloat16"
    return "cpu", "float32"


def resolve_model(spec: str, models_dir: Path) -> ModelIdentity:
    """Turn `--model` (auto | tiny | <dir> | <hub id>) into local files and an identity.

    auto: the real model when CUDA is present, else the tiny demo model. A hub id
    is fetched into the Hugging Face cache (or found there when offline).
    Raises ValueError naming the setting when the spec leads nowhere.
    """
    device, dtype = pick_device()
    if spec == "auto":
        spec = HUB_ID if device == "cuda" else "tiny"
    check_model_spec(spec)
    local = Path(spec).expanduser()
    if spec == "tiny":
        path, model_id, fingerprint = ensure_tiny_model(models_dir), TINY_MODEL_ID, None
    elif local.is_dir():
        path, model_id, fingerprint = local, str(local.resolve()), None
    else:
        from huggingface_hub import snapshot_download

        path, model_id = Path(snapshot_download(spec)), spec
        fingerprint = f"{spec}@{path.name}"  # the snapshot directory is named by commit
    demo = spec == "tiny"
    return ModelIdentity(
        model_id=model_id,
        fingerprint=fingerprint or fingerprint_dir(path),
        path=path,
        device=device,
        dtype=dtype,
        demo=demo,
        min_size=64 if demo else 256,
    )


def check_model_spec(spec: str) -> None:
    """Raise ValueError saying how to fix `spec` unless it can name a model."""
    if spec in ("auto", "tiny"):
        return
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ValueError(f"{spec} has no model_index.json; point it at a diffusers model directory")
        return
    if not _HUB_ID.fullmatch(spec):
        raise ValueError(
            f"{spec!r} is not auto, tiny, an existing directory, or a Hugging Face hub id like {HUB_ID}"
        )


def fingerprint_dir(path: Path) -> str:
    """SHA-256 over the model directory: small files by content, large ones by name and size."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = file.relative_to(path).as_posix()
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        if size <= _HASH_CONTENT_LIMIT:
            digest.update(file.read_bytes())
    return "sha256:" + digest.hexdigest()


def load_pipeline(identity: ModelIdentity) -> Any:
    """Load the diffusers ZImagePipeline from local files onto the device."""
    import torch
    from diffusers import ZImagePipeline

    quiet_progress_bars()
    dtype = getattr(torch, identity.dtype)
    pipe = ZImagePipeline.from_pretrained(identity.path, dtype=dtype)
    pipe.to(identity.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_demo_spec(spec: str) -> bool:
    """Whether `--model spec` will serve the tiny demo model (known before loading)."""
    return spec == "tiny" or (spec == "auto" and pick_device()[0] != "cuda")


def quiet_progress_bars() -> None:
    """diffusers and transformers draw tqdm bars while loading; they only clutter service logs."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
