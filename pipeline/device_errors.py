"""Device-error policy: which failures of a model call end the process, and freeing
what a failed call left on the device.

An error that leaves the CUDA context broken makes every later call fail too, so
the engine marks itself failed and the app ends the process for Supervisor to
restart it (as text-generation-inference does). Out of memory is never one of
them: the engine recovers from it (pipeline/rendering.py).
"""

from __future__ import annotations

from pipeline.errors import FatalDeviceError, GenerationFailed

# Errors after which the CUDA context is unusable: every later call fails too, so
# the process must end and be restarted (out of memory is not one of them).
FATAL_DEVICE_ERRORS = (
    "illegal memory access",
    "illegal instruction",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "uncorrectable ecc error",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "cuda error: unknown error",
    "cuda driver error",
    "device not ready",
    "gpu has fallen off the bus",
)


def is_fatal_device_error(exc: BaseException) -> bool:
    """Whether `exc` leaves the CUDA context broken (so only a new process can recover):
    only the errors FATAL_DEVICE_ERRORS lists, whatever the exception's class (an
    AcceleratorError can be a plain "out of memory" from outside the caching allocator).
    Out-of-memory errors are never fatal."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in FATAL_DEVICE_ERRORS)


def model_call_failure(exc: Exception) -> Exception:
    """The exception to raise for a model call that failed other than by running out of
    memory: FatalDeviceError when the device is gone, else GenerationFailed."""
    if is_fatal_device_error(exc):
        return FatalDeviceError(f"unrecoverable device error: {type(exc).__name__}: {exc}")
    return GenerationFailed(f"the model failed: {type(exc).__name__}: {exc}")


def free_device_memory(device: str) -> None:
    """Drop what a failed call left behind: Python references, then the CUDA cache."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
