"""ControlNet (`--controlnet`): the Z-Image-Turbo Fun ControlNet Union, or a tiny one.

`--controlnet` names the weights: a `.safetensors` file in VideoX-Fun's layout (the
published `Z-Image-Turbo-Fun-Controlnet-Union*.safetensors`, read with diffusers'
`from_single_file`), a diffusers directory, or `tiny`: a ControlNet of the tiny
model's shapes with fixed random weights, built locally as the tiny model is, so
the feature runs (and changes the image) on a machine without a GPU.

A control request is text-to-image guided by a control image (an edge map, a depth
map, a pose drawn by the client: the Union model reads all of them), its kind and a
conditioning scale. The key holds the control image's pixels' SHA-256, the kind,
the scale and the ControlNet's weights by content (pipeline/fingerprint.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline.errors import RequestInvalid
from pipeline.fingerprint import DigestCache
from pipeline.image_input import RESIZE, DecodedImage, ImageInput

log = logging.getLogger(__name__)

TINY_CONTROLNET = "tiny"
TINY_CONTROLNET_ID = "tiny-z-image-controlnet-v1"
# What the Union model was trained on; the client makes the map (we do no preprocessing).
ControlKind = Literal["canny", "hed", "depth", "pose", "mlsd"]
CONTROL_KINDS: tuple[str, ...] = get_args(ControlKind)
DEFAULT_CONTROL_SCALE = 0.75  # diffusers' default
MAX_CONTROL_SCALE = 2.0


@dataclass(frozen=True, eq=False)
class ControlInput:
    """A control image, its kind and conditioning scale, for the ControlNet `fingerprint`."""

    image: DecodedImage
    control_kind: str
    scale: float
    fingerprint: str
    kind = "control"
    strength = 1.0  # every step runs: the control image guides, it is not a start
    mask = None

    def key_fields(self) -> dict[str, Any]:
        return {
            "image": {
                "kind": self.kind,
                "pixels": self.image.sha256,
                "control": self.control_kind,
                "scale": self.scale,
                "controlnet": self.fingerprint,
                "resize": RESIZE,
            }
        }

    def fitted(self, width: int, height: int) -> tuple[Any, None]:
        from PIL import Image

        pixels = self.image.pixels
        if self.image.size != (width, height):
            pixels = pixels.resize((width, height), Image.Resampling.LANCZOS)
        return pixels, None


def control_input(
    image: DecodedImage, kind: str, scale: float | None, fingerprint: str | None
) -> ControlInput:
    """A checked control input; RequestInvalid naming the field (`control_image` when
    this server has no `--controlnet`)."""
    if fingerprint is None:
        raise RequestInvalid("control_image", "this server has no ControlNet; start it with --controlnet")
    if kind not in CONTROL_KINDS:
        raise RequestInvalid("control_kind", f"control_kind must be one of {', '.join(CONTROL_KINDS)}")
    value = DEFAULT_CONTROL_SCALE if scale is None else float(scale)
    if not 0.0 <= value <= MAX_CONTROL_SCALE:  # NaN fails too
        raise RequestInvalid("control_scale", f"control_scale must be between 0 and {MAX_CONTROL_SCALE:g}")
    return ControlInput(image, kind, value, fingerprint)


def controlnet_path(spec: str, models_dir: Path) -> Path:
    """Where the weights `spec` names are (the tiny ControlNet built first if need be)."""
    return ensure_tiny_controlnet(models_dir) if spec == TINY_CONTROLNET else Path(spec)


def controlnet_fingerprint(path: Path, models_dir: Path) -> str:
    """The ControlNet's weights by content, as the model's own fingerprint: the digests
    kept beside the models spare reading the weights again at a restart."""
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors"))
    )
    digests = DigestCache(models_dir / "digests.json")
    listing = hashlib.sha256()
    for file in files:
        listing.update(f"{file.name}\0{digests.digest(file)}\n".encode())
    digests.save()
    return "sha256:" + listing.hexdigest()


def load_controlnet(path: Path, dtype: Any, device: str) -> Any:
    """The ControlNet at `path` (a single file in VideoX-Fun's layout, or a diffusers
    directory) in `dtype` on `device`."""
    from diffusers import ZImageControlNetModel

    if path.is_file():
        model = ZImageControlNetModel.from_single_file(str(path), torch_dtype=dtype)
    else:
        model = ZImageControlNetModel.from_pretrained(path, torch_dtype=dtype)
    return model.to(device)


EditInput = ImageInput | ControlInput


def ensure_tiny_controlnet(root: Path) -> Path:
    """Build the tiny ControlNet under `root` unless it is there (written aside, then renamed)."""
    target = root / TINY_CONTROLNET_ID
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{TINY_CONTROLNET_ID}."))
    try:
        import torch
        from diffusers import ZImageControlNetModel

        torch.manual_seed(3)
        # The tiny transformer's shapes (pipeline/tiny_model.py): dim 32, 2 heads, 16 latent channels.
        model = ZImageControlNetModel(
            control_layers_places=[0],
            control_refiner_layers_places=[0],
            control_in_dim=16,
            add_control_noise_refiner="control_noise_refiner",
            dim=32,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
        )
        with torch.no_grad():  # zero-initialised projections would make it a no-op
            for param in model.parameters():
                if not param.any():
                    param.normal_(0.0, 0.02)
        model.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built the tiny ControlNet in %s", target)
    return target
