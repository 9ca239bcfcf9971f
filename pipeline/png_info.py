"""Generation parameters read back from an image file ("PNG Info"): the A1111
`parameters` text (pipeline/image_metadata.py writes it; A1111, Fooocus and
ComfyUI exporters write the same) parsed into our request's fields.

The text is anybody's (a dropped file): parsing never raises on it. A field that
is missing, or not a number where one is needed, is left out of the result, so
the caller keeps its own value for it.
"""

from __future__ import annotations

import io
import re
from typing import Any

from PIL import Image, UnidentifiedImageError

from pipeline.lora import split_prompt_loras

NEGATIVE = "Negative prompt:"
# A1111's own pattern for one `Key: value` of the last line (modules/infotext_utils.py,
# re_param_code): a value is quoted, or runs to the next comma.
_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"(\d+)\s*x\s*(\d+)")
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+(?:\.\d+)?")


def image_parameters(data: bytes) -> str | None:
    """The `parameters` text of a PNG (its text chunk) or of a JPEG/WebP (the EXIF
    UserComment A1111 writes); None when the file has none or is no image. Reads the
    file's chunks only: no pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            text = image.info.get("parameters")
            if isinstance(text, str):
                return text
            comment = image.getexif().get_ifd(0x8769).get(0x9286)  # Exif IFD, UserComment
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    if isinstance(comment, bytes):
        head, body = comment[:8], comment[8:]
        if head == b"UNICODE\0":
            return body.decode("utf-16-be", errors="replace")
        if head == b"ASCII\0\0\0":
            return body.decode("ascii", errors="replace")
    return None


def parse_parameters(text: str) -> dict[str, Any]:
    """Our fields from an A1111 `parameters` text: prompt, negative_prompt, steps,
    seed, width, height, guidance_scale (A1111's CFG scale c is our c - 1, never
    below 0: pipeline.image_metadata.a1111_cfg_scale), and loras (`[{name, scale}]`
    from the prompt's `<lora:name:scale>` tags, taken out of the prompt as A1111
    does; tags it cannot read stay in the prompt). Only the fields it holds."""
    lines = text.replace("\r\n", "\n").strip().split("\n")
    fields: dict[str, str] = {}
    found = dict(_FIELD.findall(lines[-1]))
    if len(found) >= 3:  # the last line is the fields' line, not the prompt's
        fields = {k.strip(): v.strip().strip('"') for k, v in found.items()}
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE) :].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt).strip()}
    try:
        text_only, loras = split_prompt_loras(out["prompt"])
    except ValueError:  # (a bad multiplier, or a name no request may use)
        loras = []
    if loras:
        out["prompt"] = re.sub(r"[ \t]{2,}", " ", text_only).strip()  # (where a tag was)
        out["loras"] = [{"name": lora.name, "scale": lora.scale} for lora in loras]
    if in_negative:
        out["negative_prompt"] = "\n".join(negative).strip()
    if (steps := _INT.fullmatch(fields.get("Steps", ""))) is not None:
        out["steps"] = int(steps[0])
    if (seed := _INT.fullmatch(fields.get("Seed", ""))) is not None:
        out["seed"] = int(seed[0])
    if (size := _SIZE.fullmatch(fields.get("Size", ""))) is not None:
        out["width"], out["height"] = int(size[1]), int(size[2])
    if (cfg := _FLOAT.fullmatch(fields.get("CFG scale", ""))) is not None:
        out["guidance_scale"] = max(0.0, float(cfg[0]) - 1.0)
    return out
