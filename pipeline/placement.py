"""Where each part of the model lives on a CUDA machine, and loading it there.

The plan weighs the model's device bytes (meta_memory.py, from the configs) against
`torch.cuda.mem_get_info()`. Modes, from fastest to smallest:

- none: everything on the GPU.
- stream-text-encoder: the transformer and the VAE on the GPU; the text encoder's
  weights in pinned CPU memory, streamed through the GPU block by block when a new
  prompt is encoded (diffusers' group offloading with a CUDA stream, as `model`
  does for every part): it holds about 1.1 GiB of the GPU while encoding, and a
  new prompt costs one pass over PCIe (7.5 GiB) instead of one on the CPU.
- text-encoder: the transformer and the VAE on the GPU, the text encoder (7.5 GiB
  of the full model) on the CPU; the prompt-embedding cache keeps it off the path
  of every repeated prompt, and a new prompt costs one text-encoder pass on the CPU.
- model: diffusers' group offloading with CUDA streams: every component's weights
  stay in pinned CPU memory (copied there once, at load) and stream through the GPU
  block by block, the next block arriving while one computes; a block is dropped
  from the GPU after it runs (no copy back). It replaced accelerate's model
  offload, which ended every pipeline call with `pipe.to("cpu")`: the transformer's
  11.5 GiB copied back over pageable memory on every request.
- sequential: accelerate's sequential offload; weights stream to the GPU module
  by module on every forward (slowest; fits any card with a few GiB).

`auto` takes the first that fits. Weights go from the files straight to their
device (`device_map` in `from_pretrained`), never first whole into CPU memory.
Under `auto`, running out of device memory while loading (another process or
replica took memory after the plan was made) steps down to the next mode that
fits the memory free then (`step_down`), and logs the step.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pipeline.fit import Load
from pipeline.fp8 import quantize_fp8
from pipeline.meta_memory import REFERENCE_SIZE, MemoryNeeds

log = logging.getLogger(__name__)

Offload = Literal["auto", "none", "stream-text-encoder", "text-encoder", "model", "sequential"]
OFFLOAD_MODES: tuple[str, ...] = ("none", "stream-text-encoder", "text-encoder", "model", "sequential")
GiB = 1 << 30
# Device memory the tensor counts cannot see: cuBLAS/cuDNN workspaces, the caching
# allocator's rounding and fragmentation, torch.compile's graphs. A guess to be
# checked on a GPU (bench/gpu.py reports the peak); mem_get_info already excludes
# the CUDA context, which exists by the time it answers.
MARGIN = 1 * GiB


class DoesNotFit(RuntimeError):
    """Even sequential offload needs more device memory than the GPU has free."""


@dataclass(frozen=True)
class Placement:
    """The plan: a mode, where each component's weights are loaded, the VAE's memory
    savers, and the figures it was chosen from (bytes; absent on the CPU)."""

    mode: str
    device: str
    reason: str
    free_bytes: int | None = None
    total_bytes: int | None = None
    needs: dict[str, int] = field(default_factory=dict)
    # Transformer activation bytes the free memory leaves for one model call, and what
    # one unit of load (pipeline.fit.Load: a pixel of one transformer row) takes.
    activation_budget: int | None = None
    bytes_per_unit: float | None = None

    def max_images(self, load: Load) -> int | None:
        """Most images like `load` (one image) one model call fits by the plan; None
        without a plan (the CPU)."""
        if self.activation_budget is None or not self.bytes_per_unit:
            return None
        return int(self.activation_budget // (self.bytes_per_unit * load.units))

    @property
    def vae_slicing(self) -> bool:
        """A batch is decoded one image at a time: its peak is one image's, whatever the batch."""
        return self.device == "cuda"

    @property
    def vae_tiling(self) -> bool:
        """Sides over the VAE's tile (1024 px for the real model) are decoded in overlapping
        tiles. Set by the image size alone, never by the card, so replicas with different
        GPUs decode a key's image the same way; a 2048² decode then peaks like a 1024² one."""
        return self.device == "cuda"

    def component_devices(self) -> dict[str, str]:
        """Where `from_pretrained` puts each component's weights (offload hooks move
        them later in the model and sequential modes)."""
        if self.mode == "none":
            return {"transformer": self.device, "text_encoder": self.device, "vae": self.device}
        if self.mode in ("stream-text-encoder", "text-encoder"):
            return {"transformer": self.device, "text_encoder": "cpu", "vae": self.device}
        return {"transformer": "cpu", "text_encoder": "cpu", "vae": "cpu"}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"vae_slicing": self.vae_slicing, "vae_tiling": self.vae_tiling}

    def describe(self) -> str:
        if self.device != "cuda":
            return f"placement: {self.reason}"
        needs = ", ".join(f"{mode} {gib(b)}" for mode, b in self.needs.items())
        free = gib(self.free_bytes or 0)
        return f"placement: {self.mode} ({self.reason}); {free} free of {gib(self.total_bytes or 0)}; needs: {needs}"


def gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def mode_needs(needs: MemoryNeeds) -> dict[str, int]:
    """Device bytes each mode needs: resident weights + peak activations + MARGIN."""
    w = needs.weights
    resident = {
        "none": sum(w.values()),
        "stream-text-encoder": w["transformer"] + w["vae"] + needs.streamed["text_encoder"],
        "text-encoder": w["transformer"] + w["vae"],
        "model": max(needs.streamed.values()),
        "sequential": needs.largest_module,
    }
    return {mode: b + needs.work + MARGIN for mode, b in resident.items()}


def plan_placement(requested: str, device: str, needs: MemoryNeeds | None) -> Placement:
    """Choose the mode for `--offload requested` on `device`.

    On the CPU everything stays in RAM ("none"). On CUDA, `auto` takes the first mode
    whose need fits the free memory (raises DoesNotFit when none does); an explicit
    mode is obeyed, with a warning when the estimate says it will not fit.
    """
    if device != "cuda":
        return Placement("none", device, "on the CPU, every component in RAM")
    import torch

    assert needs is not None, "a CUDA plan needs the model's memory needs"
    free, total = torch.cuda.mem_get_info()
    by_mode = mode_needs(needs)
    # The reference load of transformer_work: one guided REFERENCE_SIZE² image (2 rows).
    per_unit = needs.transformer_work / Load(REFERENCE_SIZE, REFERENCE_SIZE, 1, True).units

    def budget(mode: str) -> dict[str, Any]:
        return {"activation_budget": free - (by_mode[mode] - needs.work), "bytes_per_unit": per_unit}

    if requested != "auto":
        if by_mode[requested] > free:
            log.warning(
                "--offload %s needs about %s but the GPU has %s free: expect out-of-memory errors; "
                "--offload auto picks a mode that fits",
                requested,
                gib(by_mode[requested]),
                gib(free),
            )
        return Placement(requested, device, "chosen by --offload", free, total, by_mode, **budget(requested))
    for mode in OFFLOAD_MODES:
        if by_mode[mode] <= free:
            return Placement(
                mode, device, "auto: the fastest mode that fits", free, total, by_mode, **budget(mode)
            )
    raise DoesNotFit(
        f"the GPU has {gib(free)} free of {gib(total)}; even --offload sequential needs about "
        f"{gib(by_mode['sequential'])} (free GPU memory, or use a larger card)"
    )


def step_down(plan: Placement, needs: MemoryNeeds, error: str) -> Placement:
    """The plan to load with after `plan` ran out of device memory while loading
    (`error`: the first line of torch's message): under `auto`, the first mode after
    `plan.mode` that fits the memory free now, logged as a warning. Call it once the
    failed attempt's tensors are unreachable: it collects them and empties torch's
    cache before measuring. Raises DoesNotFit naming the failure when the mode was
    chosen by `--offload` (obeyed, never changed) or no later mode fits."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    failed = f"out of memory while loading with --offload {plan.mode} ({error})"
    if not plan.reason.startswith("auto"):
        raise DoesNotFit(f"{failed}; free GPU memory, or use --offload auto to step down to a mode that fits")
    free, total = torch.cuda.mem_get_info()
    later = OFFLOAD_MODES[OFFLOAD_MODES.index(plan.mode) + 1 :]
    for mode in later:
        if plan.needs[mode] <= free:
            log.warning("%s; %s free now: stepping down to %s", failed, gib(free), mode)
            budget = free - (plan.needs[mode] - needs.work)
            return replace(
                plan,
                mode=mode,
                reason=f"auto: stepped down from {plan.mode}, out of memory while loading",
                free_bytes=free,
                total_bytes=total,
                activation_budget=budget,
            )
    raise DoesNotFit(
        f"{failed}; {gib(free)} free now of {gib(total)}, and no later mode fits "
        f"({', '.join(f'{m} needs {gib(plan.needs[m])}' for m in later) or 'none is left'})"
    )


def load_placed(
    model_dir: Path, dtype: Any, plan: Placement, quantize: str = "none", encoder_dtype: Any = None
) -> Any:
    """Load the pipeline from `model_dir` by `plan`: each weight-bearing component with
    `from_pretrained(..., device_map=<its device>)` (straight from the safetensors to
    the GPU), the rest (scheduler, tokenizer) by the pipeline; then the offload hooks
    and the VAE's memory savers. With fp8 the transformer is read to the CPU and
    quantized layer by layer onto its device, so its bfloat16 form never sits whole
    on the GPU. The text encoder is loaded in `encoder_dtype` when given (float32 on
    a CPU without native bfloat16: loading.cpu_encoder_dtype).

    Per component rather than the pipeline's own `device_map`: diffusers 0.42.1
    takes only a string there ("cuda", "cpu", "balanced"), so it cannot keep the text
    encoder on the CPU, and a device-mapped pipeline refuses `.to()` and offload."""
    from diffusers import ZImagePipeline

    index = json.loads((model_dir / "model_index.json").read_text())
    components = {}
    for name, device in plan.component_devices().items():
        library, class_name = index[name]
        cls = getattr(importlib.import_module(library), class_name)
        fp8 = quantize == "fp8" and name == "transformer"
        target = "cpu" if fp8 else device
        # The CPU is from_pretrained's own default; a device map there only adds hooks.
        load_dtype = encoder_dtype if name == "text_encoder" and encoder_dtype is not None else dtype
        kwargs = {"dtype": load_dtype} if target == "cpu" else {"dtype": load_dtype, "device_map": target}
        components[name] = cls.from_pretrained(model_dir / name, **kwargs)
        if fp8:
            quantize_fp8(components[name], device)
    pipe = ZImagePipeline.from_pretrained(model_dir, dtype=dtype, **components)
    finish_placement(pipe, plan)
    return pipe


def finish_placement(pipe: Any, plan: Placement) -> None:
    """Offload hooks for the model and sequential modes, and the VAE's slicing and tiling."""
    if plan.mode == "model":
        stream_components(pipe, plan.device)
    elif plan.mode == "stream-text-encoder":
        stream_components(pipe, plan.device, only="text_encoder")
    elif plan.mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=plan.device)
    if plan.vae_slicing:
        pipe.vae.enable_slicing()
    if plan.vae_tiling:
        pipe.vae.enable_tiling()


def stream_components(pipe: Any, device: str, only: str | None = None) -> None:
    """Stream every component's weights (or component `only`'s) through `device` from
    pinned CPU memory: diffusers' block-level group offloading, one block per group (its ModuleList
    blocks; the rest of a component is one group held for the component's whole
    forward), with a CUDA stream that copies the next block while one computes
    (meta_memory.streamed_bytes counts what that holds). Off CUDA (the tests) the same
    hooks move blocks without a stream. The pinned copies are made
    here, once: the CPU then holds those weights in page-locked memory (19.1 GiB for
    the full model, 7.5 GiB for its text encoder), which the kernel cannot swap out."""
    import torch

    onload = torch.device(device)
    options: dict[str, Any] = {
        "onload_device": onload,
        "offload_type": "block_level",
        "num_blocks_per_group": 1,
        "use_stream": onload.type == "cuda",  # the CPU (tests) has no streams: plain moves there
    }
    if only is None:
        pipe.enable_group_offload(**options)
        return
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(module=getattr(pipe, only), **options)


def text_encoder_device(pipe: Any) -> Any:
    """Where the text encoder runs: the onload device of diffusers' group offloading
    (model mode) or the execution device of accelerate's offload hooks (sequential)
    when it has them, else where its weights are (the CPU in text-encoder mode). Its
    inputs must be put there."""
    from diffusers.hooks.group_offloading import _get_group_onload_device

    try:
        return _get_group_onload_device(pipe.text_encoder)
    except ValueError:  # diffusers' answer for a module without group offloading
        pass
    for module in pipe.text_encoder.modules():
        hook = getattr(module, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            import torch

            return torch.device(hook.execution_device)
    return pipe.text_encoder.device


def quiet_progress_bars() -> None:
    """diffusers and transformers draw tqdm bars while loading; they only clutter service logs."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
