"""Start-up warnings of third-party libraries that mean nothing to someone running
this service, lowered to DEBUG (shown with `--log-level debug`, hidden otherwise).

Only the known ones, each matched by its logger, its message and what it names;
any other warning of the same loggers is shown as before:

- torchao (`torchao/__init__.py`) failing to load its own prebuilt `_C*.so`
  kernels built for another Python or another GPU (sm_90a cutlass, mxfp8): our
  fp8 path (pipeline/fp8.py) uses torchao's Python float8 config, not them.
- torchao (`torchao/kernel/intmm.py`): "Detected no triton" on a CPU-only torch.
- torch (`torch/utils/_pytree.py`): torchao registering its own Enum classes as
  pytree constants, deprecated by torch 2.13 ("is an Enum subclass and is now
  natively supported"): torchao's to change, not the user's.
- diffusers' torchao quantizer: "Unable to import `torchao` Tensor objects",
  which only matters for loading checkpoints serialised by torchao (we load none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Match = Callable[[logging.LogRecord], bool]


def _own_kernel_library(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return message.startswith("Failed to load ") and "/torchao/_C" in message and ".so" in message


def _no_triton(record: logging.LogRecord) -> bool:
    return "Detected no triton" in record.getMessage()


def _torchao_enum_constant(record: logging.LogRecord) -> bool:
    named = record.args[0] if isinstance(record.args, tuple) and record.args else None
    return (
        isinstance(record.msg, str)
        and record.msg.startswith("%s is an Enum subclass and is now natively supported")
        and getattr(named, "__module__", "").startswith("torchao")
    )


def _torchao_tensor_objects(record: logging.LogRecord) -> bool:
    return record.getMessage().startswith("Unable to import `torchao` Tensor objects")


KNOWN: dict[str, Match] = {
    "torchao": _own_kernel_library,
    "torchao.kernel.intmm": _no_triton,
    "torch.utils._pytree": _torchao_enum_constant,
    "diffusers.quantizers.torchao.torchao_quantizer": _torchao_tensor_objects,
}


class Lowered(logging.Filter):
    """A logger's filter: records that `match` are made DEBUG records, dropped unless
    the root logger shows DEBUG (the level `--log-level` set)."""

    def __init__(self, match: Match) -> None:
        super().__init__()
        self.match = match

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not self.match(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def install() -> None:
    """Add the filters (once each) to the loggers of KNOWN, before the libraries load."""
    for name, match in KNOWN.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, Lowered) and f.match is match for f in logger.filters):
            logger.addFilter(Lowered(match))
