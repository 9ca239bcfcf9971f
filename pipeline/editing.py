"""The image-input pipelines (img2img, inpainting, ControlNet) over the loaded model's components.

`EditPipes` makes diffusers' `ZImageImg2ImgPipeline`, `ZImageInpaintPipeline` and
`ZImageControlNetPipeline` (with the `--controlnet` model) with `from_pipe` from the loaded text-to-image pipeline, once each, on first use:
they share its modules (the same transformer, VAE and text encoder objects, so no
second copy of the weights; tests/test_image_input.py checks the identity), and
speed levers applied to the transformer apply to them too. Runs on the engine's
thread only, as every model call does.
"""

from __future__ import annotations

from typing import Any

from pipeline.controlnet import ControlInput, EditInput


class EditPipes:
    """The edit pipelines of one loaded text-to-image pipeline `base` (and, with
    `--controlnet`, its ControlNet `controlnet`)."""

    def __init__(self, base: Any, controlnet: Any = None) -> None:
        self.base = base
        self.controlnet = controlnet
        self._pipes: dict[str, Any] = {}

    def for_input(self, image: EditInput) -> Any:
        """The pipeline of `image`'s kind, made from `base` the first time."""
        if image.kind not in self._pipes:
            from diffusers import ZImageControlNetPipeline, ZImageImg2ImgPipeline, ZImageInpaintPipeline

            if image.kind == "control":
                pipe = ZImageControlNetPipeline.from_pipe(self.base, controlnet=self.controlnet)
            else:
                cls = ZImageInpaintPipeline if image.kind == "inpaint" else ZImageImg2ImgPipeline
                pipe = cls.from_pipe(self.base)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[image.kind] = pipe
        return self._pipes[image.kind]


def edit_arguments(image: EditInput, width: int, height: int) -> dict[str, Any]:
    """The pipeline call's extra arguments for `image` at the request's size."""
    picture, mask = image.fitted(width, height)
    if isinstance(image, ControlInput):
        return {"control_image": picture, "controlnet_conditioning_scale": image.scale}
    arguments: dict[str, Any] = {"image": picture, "strength": image.strength}
    if mask is not None:
        arguments["mask_image"] = mask
    return arguments


def steps_run(steps: int, strength: float) -> int:
    """How many denoising steps an edit of `strength` runs of `steps` (diffusers'
    `get_timesteps`: the first `steps - steps * strength` are skipped), at least 1."""
    return steps - int(max(steps - min(steps * strength, steps), 0))
