"""Which attention kernel the transformer runs, through diffusers' attention dispatcher.

`--attention-backend` is `auto` or a name from diffusers' registry
(`diffusers.models.attention_dispatch.AttentionBackendName`). `auto`, on CUDA,
probes the candidates its GPU can run on the shape the model attends over (about
4.6k tokens; pipeline/attention_probe.py): FlashAttention-3 (Hopper, with the
`flash_attn_interface` package), cuDNN attention and FlashAttention-2
(`flash-attn`; cuDNN first on Hopper, where it is the faster, FlashAttention-2 first
before), and PyTorch's native SDPA. It keeps those whose output matches native
attention, times them, takes the fastest and logs the table; on other devices it
is native.

Masks: the Z-Image transformer needs an attention mask when the sequences of a
batch differ in length, which is the rule with guidance > 0 (the prompt and the
negative prompt are encoded to different lengths). Flash kernels refuse masks
(diffusers raises "`attn_mask` is not supported"), so with one of those the
masked calls go to native SDPA (which picks a masked fused kernel itself) and
only the unmasked ones to the chosen kernel.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from pipeline import attention_probe

log = logging.getLogger(__name__)

AUTO = "auto"
NATIVE = attention_probe.NATIVE
# auto's candidates on CUDA with the compute capability each needs, listed (and so
# preferred on a tie) by what is expected fastest: Hopper runs FlashAttention-3 and
# cuDNN's fused attention (its Hopper kernels) faster than FlashAttention-2, which
# has none; before Hopper FlashAttention-2 comes first.
AUTO_ORDER_HOPPER: tuple[tuple[str, tuple[int, int]], ...] = (
    ("_flash_3", (9, 0)),
    ("_native_cudnn", (8, 0)),
    ("flash", (8, 0)),
    (NATIVE, (0, 0)),
)
AUTO_ORDER_CUDA: tuple[tuple[str, tuple[int, int]], ...] = (
    ("_flash_3", (9, 0)),
    ("flash", (8, 0)),
    ("_native_cudnn", (8, 0)),
    (NATIVE, (0, 0)),
)
HOPPER = (9, 0)
# Backends whose diffusers implementation applies an attention mask; any other is
# paired with native for the calls that carry a mask.
MASK_CAPABLE = frozenset({NATIVE, "_native_math", "_native_efficient"})


def backend_names() -> list[str]:
    """Every name `--attention-backend` accepts: auto and diffusers' registry."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [AUTO, *sorted(b.value for b in AttentionBackendName)]


def check_backend_name(name: str) -> str:
    """Return `name` if diffusers knows it (or it is auto); else raise ValueError listing the choices."""
    if name == AUTO:
        return name  # without importing diffusers (and torch) while parsing settings
    names = backend_names()
    if name not in names:
        raise ValueError(f"{name!r} is not an attention backend; choose one of: {', '.join(names)}")
    return name


def choose_backend(requested: str, device: str, dtype: Any, heads: int, head_dim: int) -> str:
    """The backend to use on `device`. `auto` on CUDA probes every candidate the GPU
    can run (auto_candidates) on the model's real attention shape and takes the fastest
    whose output is right, logging the table; elsewhere it is native. An explicit name
    that cannot run here raises ValueError naming the setting, the reason and the fix."""
    import torch

    check_backend_name(requested)
    if requested != AUTO:
        problem = backend_problem(requested, device, dtype, heads, head_dim)
        if problem:
            raise ValueError(
                f"--attention-backend {requested} cannot run here: {problem}; "
                "install what it needs or use --attention-backend auto"
            )
        return requested
    if not device.startswith("cuda"):
        return NATIVE
    capability = torch.cuda.get_device_capability(torch.device(device))
    names = auto_candidates(capability)
    q, k, v = attention_probe.probe_inputs(device, dtype, heads, head_dim, attention_probe.PROBE_TOKENS)
    results = attention_probe.probe(names, q, k, v, torch.cuda.synchronize)
    chosen = attention_probe.fastest(results)
    attention_probe.log_table(results, chosen, tuple(q.shape), dtype)
    return chosen


def auto_candidates(capability: tuple[int, int]) -> list[str]:
    """The backends `auto` probes on a GPU of `capability`, in order of preference;
    each one the GPU is too old for is logged and left out."""
    order = AUTO_ORDER_HOPPER if capability >= HOPPER else AUTO_ORDER_CUDA
    names = []
    for name, needs in order:
        if capability < needs:
            log.info(
                "attention: %s needs compute capability %d.%d (this GPU: %d.%d)", name, *needs, *capability
            )
            continue
        names.append(name)
    return names


def backend_problem(name: str, device: str, dtype: Any, heads: int, head_dim: int) -> str | None:
    """Why `name` cannot run on `device` (its package is missing, or on tensors shaped
    like the model's it fails or disagrees with native attention), or None when it runs.
    On CUDA the shape is the probe's 4.6k tokens; elsewhere 32 (the CPU's native
    attention over 4.6k tokens of the full model would take seconds)."""
    tokens = attention_probe.PROBE_TOKENS if device.startswith("cuda") else 32
    q, k, v = attention_probe.probe_inputs(device, dtype, heads, head_dim, tokens)
    [result] = attention_probe.probe([name], q, k, v)
    return result.problem


class MaskFallbackProcessor:
    """An attention processor that runs `processor` (set to a mask-less kernel) for
    unmasked calls and a copy of it set to `masked_backend` for masked ones."""

    def __init__(self, processor: Any, masked_backend: str) -> None:
        from diffusers.models.attention_dispatch import AttentionBackendName

        self.plain = processor
        self.masked = copy.copy(processor)
        self.masked._attention_backend = AttentionBackendName(masked_backend)
        self._attention_backend = processor._attention_backend

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        freqs_cis: Any = None,
    ) -> Any:
        # A static branch for torch.compile: a graph with a mask, one without.
        processor = self.plain if attention_mask is None else self.masked
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)


def apply_backend(transformer: Any, backend: str) -> int:
    """Set `backend` on every attention module of `transformer`; with a kernel that
    cannot take a mask, masked calls go to native. Returns how many modules got the
    mask fallback."""
    from diffusers.models.attention_processor import Attention

    transformer.set_attention_backend(backend)
    if backend in MASK_CAPABLE:
        return 0
    wrapped = 0
    for module in transformer.modules():
        if isinstance(module, Attention) and hasattr(module.processor, "_attention_backend"):
            module.set_processor(MaskFallbackProcessor(module.processor, NATIVE))
            wrapped += 1
    return wrapped


def model_attention_shape(transformer: Any) -> tuple[int, int]:
    """(heads, head_dim) of the transformer's attention, for the probe."""
    config = transformer.config
    return config.n_heads, config.dim // config.n_heads
