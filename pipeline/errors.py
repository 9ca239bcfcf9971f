"""What can go wrong with a generation, as the pipeline tells its callers.

Every exception the pipeline raises to the UI, the HTTP routes and prewarm is
here, so a caller maps one list (web/errors.py turns them into statuses and
messages). Each message says what went wrong and, where the caller can act, how
to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RequestInvalid(ValueError):
    """A request that cannot be served as asked; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ImageTooLarge(RequestInvalid):
    """An image larger than any made here did not fit in device memory even alone and
    after freeing what could be freed: answered 422 naming the largest size known to
    fit, since asking again cannot help on this device."""


class QueueFull(Exception):
    """More generations are waiting than `max_queue` allows; retry later."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"the generation queue is full ({depth} waiting); retry shortly")
        self.depth = depth


class ModelUnavailable(Exception):
    """The model could not be loaded; nothing can be generated until a restart."""


class ShuttingDown(ModelUnavailable):
    """The process is stopping (SIGTERM): it finishes what it has and takes no new generations."""


class OutOfMemory(ModelUnavailable):
    """One image no larger than one made before did not fit in device memory (after
    freeing what could be freed): something else holds memory, so it is answered 503
    and may fit later."""


class FatalDeviceError(ModelUnavailable):
    """The device is unusable (pipeline/device_errors.py): the engine fails for good and
    the process must restart."""


class JobCancelled(Exception):
    """The caller cancelled its generation before the model started on it: nothing
    was generated, and nothing is stored."""


class JobInterrupted(JobCancelled):
    """The caller interrupted its generation while the model was on it: it stopped
    after denoising step `step` of `steps`, and nothing is stored."""

    def __init__(self, step: int, steps: int) -> None:
        super().__init__(f"interrupted at step {step}/{steps}; nothing was stored")
        self.step, self.steps = step, steps


class GenerationFailed(Exception):
    """The model ran but produced no usable image (an error, NaN or a black frame)."""


def validation_message(error: Mapping[str, Any]) -> str:
    """The message of one pydantic validation error, without pydantic's "Value error, "
    prefix (our validators' messages already say what is wrong and how to fix it)."""
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")
