"""The image-input pipelines (img2img, inpainting) over the loaded model's components.

`EditPipes` makes diffusers' `ZImageImg2ImgPipeline` and `ZImageInpaintPipeline`
with `from_pipe` from the loaded text-to-image pipeline, once each, on first use:
they share its modules (the same transformer, VAE and text encoder objects, so no
second copy of the weights; tests/test_image_input.py checks the identity), and
speed levers applied to the transformer apply to them too. Runs on the engine's
thread only, as every model call does.
"""

from __future__ import annotations

from typing import Any

from pipeline.image_input import ImageInput


class EditPipes:
    """The edit pipelines of one loaded text-to-image pipeline `base`."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self._pipes: dict[str, Any] = {}

    def for_input(self, image: ImageInput) -> Any:
        """The pipeline of `image`'s kind, made from `base` the first time."""
        if image.kind not in self._pipes:
            from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline

            cls = ZImageInpaintPipeline if image.kind == "inpaint" else ZImageImg2ImgPipeline
            pipe = cls.from_pipe(self.base)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[image.kind] = pipe
        return self._pipes[image.kind]


def edit_arguments(image: ImageInput, width: int, height: int) -> dict[str, Any]:
    """The pipeline call's extra arguments for `image` at the request's size."""
    picture, mask = image.fitted(width, height)
    arguments: dict[str, Any] = {"image": picture, "strength": image.strength}
    if mask is not None:
        arguments["mask_image"] = mask
    return arguments


def steps_run(steps: int, strength: float) -> int:
    """How many denoising steps an edit of `strength` runs of `steps` (diffusers'
    `get_timesteps`: the first `steps - steps * strength` are skipped), at least 1."""
    return steps - int(max(steps - min(steps * strength, steps), 0))
