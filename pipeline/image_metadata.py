"""Generation parameters inside the image file, in the forms image tools read.

A1111 ("AUTOMATIC1111 stable-diffusion-webui") wrote the convention the other
tools follow (sd-parsers, sd-prompt-reader, Civitai, ComfyUI loaders, A1111's
own "PNG Info"): a `parameters` text of the prompt, an optional `Negative prompt:`
line, and one line of `Key: value` fields that must name the sampler. PNG keeps
it in a text chunk; JPEG and WebP in the EXIF UserComment of the Exif IFD,
written as `UNICODE\\0` plus UTF-16 big-endian text, the IFD0 linking to it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath

from pipeline.loading import ModelIdentity
from pipeline.lora import LoraSet
from pipeline.request import CanonicalRequest

# A1111's names for what diffusers' FlowMatchEulerDiscreteScheduler does for
# Z-Image: Euler steps over the simple (linear, shifted) sigma schedule.
SAMPLER, SCHEDULE_TYPE = "Euler", "Simple"
SOFTWARE = "Z-Image-Turbo service"


def a1111_cfg_scale(guidance_scale: float) -> float:
    """Our guidance in A1111's convention. diffusers' Z-Image mixes
    `pos + g * (pos - neg)`, A1111 `neg + c * (pos - neg)`; so c = g + 1 and
    A1111's "CFG scale: 1" is our 0 (guidance off)."""
    return guidance_scale + 1.0


def model_name(identity: ModelIdentity) -> str:
    """The model's name as A1111 shows a checkpoint: the last part of its id or
    path, with the separators of the parameters line (`,` `:` newlines) removed."""
    name = PurePosixPath(identity.model_id.replace("\\", "/")).name or identity.model_id
    return "".join(" " if c in ",:\n\r" else c for c in name).strip()


def model_hash(identity: ModelIdentity) -> str:
    """A 10-hex-digit digest of the model fingerprint, the length of A1111's short hash."""
    return hashlib.sha256(identity.fingerprint.encode()).hexdigest()[:10]


def a1111_parameters(request: CanonicalRequest, identity: ModelIdentity, loras: LoraSet = ()) -> str:
    """The A1111 `parameters` text ("infotext") of one image made with `loras`, named
    as A1111 names them: a `<lora:name:scale>` tag for each at the end of the prompt
    line (what A1111 and its PNG Info apply again), and `Lora hashes` with each one's
    short hash (what Civitai and A1111 find the file by)."""
    tags = "".join(f"<lora:{lora.name}:{lora.scale:g}>" for lora in loras)
    lines = [f"{request.prompt} {tags}" if tags else request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields = {
        "Steps": request.steps,
        "Sampler": SAMPLER,
        "Schedule type": SCHEDULE_TYPE,
        "CFG scale": f"{a1111_cfg_scale(request.guidance_scale):g}",
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash(identity),
        "Model": model_name(identity),
    }
    if hashes := [f"{_plain(lora.name)}: {lora.a1111_hash}" for lora in loras if lora.a1111_hash]:
        fields["Lora hashes"] = _quoted(", ".join(hashes))
    lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
    return "\n".join(lines)


def _plain(name: str) -> str:
    """A name as A1111 writes it in `Lora hashes`: without `:` and `,`."""
    return name.replace(":", "").replace(",", "")


def _quoted(value: str) -> str:
    """A field's value as A1111 writes it (modules/infotext_utils.py `quote`): as it
    is, or JSON-quoted when it holds the line's separators."""
    return value if not any(c in value for c in ",:\n") else json.dumps(value, ensure_ascii=False)


def a1111_exif(parameters: str, description: str) -> bytes:
    """EXIF for JPEG and WebP, made by piexif as A1111 makes it: IFD0 with
    ImageDescription (`description`, ASCII), Software and the pointer to the Exif
    IFD, whose UserComment (type UNDEFINED) holds `parameters` as `UNICODE\\0` plus
    UTF-16 big-endian, in a big-endian TIFF, so every reader decodes it alike."""
    import piexif
    import piexif.helper

    return piexif.dump(
        {
            "0th": {
                piexif.ImageIFD.ImageDescription: description.encode("ascii"),
                piexif.ImageIFD.Software: SOFTWARE.encode("ascii"),
            },
            "Exif": {
                piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(parameters, encoding="unicode")
            },
        }
    )
