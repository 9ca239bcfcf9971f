"""A1111's ControlNet extension (sd-webui-controlnet) on `/sdapi/v1/txt2img`.

A client asks for ControlNet as the extension's API reads it:
`alwayson_scripts: {"controlnet": {"args": [unit, ...]}}` (the script's name in any
case: `webuiapi` sends `ControlNet`), each unit a dict as webuiapi's
`ControlNetUnit.to_dict()` makes it. Read here:

- `image` (or the older `input_image`): the control image, base64 (a `data:` URL
  prefix accepted), or `{"image": base64}`. It must already be the map: we run no
  preprocessor (A1111's `module: "none"`).
- `module`, else `model`: the kind of map, by a word in its name (`canny`,
  `softedge_hed`, `depth_midas`, `openpose_full`, `mlsd`,
  `control_v11p_sd15_canny`, ...), one of pipeline.controlnet.CONTROL_KINDS.
- `weight`: the conditioning scale (default 1, the extension's).
- `enabled`: a unit with `false` is skipped; units without an image of their own
  are not read from `init_images` (A1111 would).

One enabled unit at most (the Union model takes every kind in one unit). The
other unit fields (`resize_mode`, `guidance_start`, `control_mode`, ...) are
accepted and ignored. A bad unit is a 422 naming its field
(`alwayson_scripts.controlnet.args[0].weight`); a unit on a server without
`--controlnet` is a 422 that names the flag. `/sdapi/v1/img2img` refuses a unit
(422): diffusers' Z-Image ControlNet pipeline starts from noise, not from an image.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from pipeline.controlnet import CONTROL_KINDS, ControlInput, control_input
from pipeline.errors import RequestInvalid
from pipeline.image_input import decode_image
from web.a1111_img2img import base64_field

SCRIPT = "controlnet"
DEFAULT_WEIGHT = 1.0  # the extension's
FIELD = f"alwayson_scripts.{SCRIPT}"


def enabled_unit(extra: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """The one enabled ControlNet unit of a body's extra fields, with its field name
    (`alwayson_scripts.controlnet.args[i]`); None when there is none. RequestInvalid
    for a malformed script entry or more than one enabled unit."""
    scripts = (extra or {}).get("alwayson_scripts")
    if scripts is None:
        return None
    if not isinstance(scripts, dict):
        raise RequestInvalid("alwayson_scripts", "alwayson_scripts must be an object of script names")
    entry = next((v for k, v in scripts.items() if str(k).lower() == SCRIPT), None)
    if entry is None:
        return None
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list):
        raise RequestInvalid(FIELD, f'{FIELD} must be {{"args": [unit, ...]}}')
    units = []
    for i, unit in enumerate(args):
        if not isinstance(unit, dict):
            raise RequestInvalid(
                f"{FIELD}.args[{i}]", f"{FIELD}.args[{i}] must be an object (a ControlNet unit)"
            )
        if unit.get("enabled", True) is not False:
            units.append((f"{FIELD}.args[{i}]", unit))
    if len(units) > 1:
        raise RequestInvalid(
            units[1][0], "one enabled ControlNet unit at a time (the Union model reads every kind in one)"
        )
    return units[0] if units else None


async def txt2img_control(extra: dict[str, Any] | None, fingerprint: str | None) -> ControlInput | None:
    """The control input a txt2img body's ControlNet unit asks for (None without a
    unit); RequestInvalid naming the unit's field, or the flag without `--controlnet`."""
    found = enabled_unit(extra)
    if found is None:
        return None
    where, unit = found
    if fingerprint is None:
        raise RequestInvalid(FIELD, "this server has no ControlNet; start it with --controlnet")
    image = unit.get("image") or unit.get("input_image")
    if isinstance(image, dict):
        image = image.get("image")
    if not isinstance(image, str) or not image:
        raise RequestInvalid(f"{where}.image", f"{where}.image is missing: send the control image, base64")
    decoded = await asyncio.to_thread(decode_image, base64_field(f"{where}.image", image), f"{where}.image")
    kind = _kind(unit)
    if kind is None:
        raise RequestInvalid(
            f"{where}.module",
            f"{where}.module (or model) must name the kind of map: one of {', '.join(CONTROL_KINDS)}",
        )
    weight = unit.get("weight", DEFAULT_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise RequestInvalid(f"{where}.weight", f"{where}.weight must be a number")
    try:
        return control_input(decoded, kind, float(weight), fingerprint)
    except RequestInvalid as exc:  # the scale, in the extension's name for it
        raise RequestInvalid(f"{where}.weight", exc.message.replace("control_scale", "weight")) from None


def refuse_on_img2img(extra: dict[str, Any] | None) -> None:
    """RequestInvalid when an img2img body has an enabled ControlNet unit (see the module)."""
    if enabled_unit(extra) is not None:
        raise RequestInvalid(
            FIELD,
            "a ControlNet unit goes with /sdapi/v1/txt2img here: the Z-Image ControlNet "
            "pipeline starts from noise, not from init_images",
        )


def _kind(unit: dict[str, Any]) -> str | None:
    """The kind a unit's `module` (unless `none`), else its `model`, names."""
    for name in (unit.get("module"), unit.get("model")):
        text = str(name or "").lower()
        if text in ("", "none"):
            continue
        for kind in CONTROL_KINDS:
            if kind in text:
                return kind
    return None
