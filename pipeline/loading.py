"""Which model to serve, where its files are, its fingerprint, and loading it."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.fingerprint import DigestCache, fingerprint_dir, pipeline_patterns
from pipeline.placement import Offload, Placement, quiet_progress_bars
from pipeline.tiny_model import TINY_MODEL_ID, ensure_tiny_model

log = logging.getLogger(__name__)

HUB_ID = "Tongyi-MAI/Z-Image-Turbo"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# Beside the models directory's models: the content digests of model files
# (pipeline/fingerprint.py), so a restart reads no weight bytes to fingerprint them.
DIGESTS_FILE = "digests.json"
# Weight formats the pipeline does not load (it reads safetensors): not downloaded.
_UNUSED_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.gguf"]
# Where the initial noise is drawn. On the CPU a seed gives the same noise on every
# machine (x86-64 with AVX2 or better), whatever its GPU; a CUDA generator's noise
# differs from the CPU's. Part of every cache key, so a change here changes keys.
NOISE_DEVICE = "cpu"
# Signs of an installed NVIDIA driver: a torch that cannot use it must not quietly
# serve the demo model on a GPU box.
NVIDIA_DRIVER_FILES = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidiactl"))

Quantize = Literal["none", "fp8"]
# float8 matmuls (torch._scaled_mm) need Ada (8.9), Hopper (9.0) or later.
FP8_MIN_CAPABILITY = (8, 9)
# bfloat16 in hardware, and the fused attention kernels in it, start with Ampere (8.0).
BF16_MIN_CAPABILITY = (8, 0)
# /proc/cpuinfo flags of CPUs that compute in bfloat16 natively (x86: AVX512-BF16,
# AMX; ARM: BF16). Without them torch emulates it, 3-5x slower than float32 on an
# AVX2 CPU (12-21 GFLOP/s against 58-75 measured for issue 23).
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


class CudaUnavailable(RuntimeError):
    """An NVIDIA driver is installed but torch cannot use CUDA: `--model auto` refuses
    to serve the demo model there."""


@dataclass(frozen=True)
class ModelOptions:
    """How the model is laid out on the device: `--offload` and `--quantize`."""

    offload: Offload = "auto"
    quantize: Quantize = "none"


@dataclass(frozen=True)
class ModelIdentity:
    """Everything about the served model that the cache key and the UI need,
    known before the weights are loaded."""

    model_id: str
    fingerprint: str
    path: Path
    device: str
    dtype: str
    demo: bool
    min_size: int
    max_size: int = 2048
    quantize: Quantize = "none"
    # How the text encoder computes a prompt: over its real tokens only (not padded to
    # 512; pipeline.rendering). Not in the key: the embeddings equal the padded ones up
    # to rounding (about one unit in the last place).
    text_encoder_tokens: str = "real"
    # The dtype the text encoder computes in, where it is not `dtype` (float32 on a
    # CPU without native bfloat16, for a model served in bfloat16). None: `dtype`.
    text_encoder_dtype: str | None = None

    @property
    def encoder_dtype(self) -> str:
        """The dtype the text encoder computes in."""
        return self.text_encoder_dtype or self.dtype

    def key_fields(self) -> dict[str, str]:
        """What of the model goes into every cache key: whatever changes its pixels for a
        given request (weights by content, dtype, quantization, where the noise is drawn,
        the text encoder's compute dtype), and not where the parts live: placement, the
        text encoder's device included, changes no more than a different GPU's kernels
        do, and padding the prompt changes nothing (bench/text_encoder_numerics.py)."""
        return {
            "model": self.fingerprint,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "noise": NOISE_DEVICE,
            "text_encoder": self.encoder_dtype,
        }


def pick_device() -> tuple[str, str]:
    """(device, dtype): CUDA with bfloat16 when present (fp16 gives NaN images with
    this model), else the CPU with float32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", "bfloat16"
    return "cpu", "float32"


def check_bf16_gpu() -> None:
    """Raise ValueError naming the card and what to use instead unless the CUDA GPU
    computes in bfloat16 natively (compute capability 8.0+). On older cards (T4, V100)
    torch would emulate bfloat16 and SDPA fall back to its unfused path, which holds the
    full attention scores (about 5 GB at 1024x1024 guided) that no memory plan here
    counts; float16, their native type, gives NaN images with this model."""
    import torch

    capability = torch.cuda.get_device_capability()
    if capability >= BF16_MIN_CAPABILITY:
        return
    name = torch.cuda.get_device_name()
    need = ".".join(map(str, BF16_MIN_CAPABILITY))
    raise ValueError(
        f"{name} (compute capability {capability[0]}.{capability[1]}) has no native bfloat16, which this "
        "model needs (float16 gives NaN images, and emulated bfloat16 runs attention outside the memory "
        f"plan); use a GPU of compute capability {need} or newer (A10, A100, L4, L40S, RTX 3090/4090, "
        "H100), or --model tiny to serve the demo model"
    )


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes in bfloat16 in hardware (its flags say so); False
    where the flags cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return not CPU_BF16_FLAGS.isdisjoint(flags)


def cpu_encoder_dtype(mode: str, dtype: str) -> str | None:
    """The text encoder's compute dtype where placement `mode` runs it on the CPU and
    the model computes in `dtype`: float32 when that is bfloat16 and the CPU has no
    native bfloat16 (its embeddings are cast to `dtype` for the transformer); None
    (the model's dtype) otherwise."""
    if mode == "text-encoder" and dtype == "bfloat16" and not cpu_has_native_bf16():
        return "float32"
    return None


def nvidia_driver() -> str | None:
    """Evidence that an NVIDIA driver is installed (a path), or None."""
    for path in NVIDIA_DRIVER_FILES:
        if path.exists():
            return str(path)
    return shutil.which("nvidia-smi")


def cuda_unusable_reason(driver: str) -> str:
    """Why torch cannot use the GPU whose driver `driver` shows, and how to fix it."""
    import torch

    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
        fix = "install a CUDA build of torch"
    else:
        why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU"
        fix = "check CUDA_VISIBLE_DEVICES and that the driver supports this CUDA version"
    return (
        f"an NVIDIA driver is installed ({driver}) but {why}, so --model auto would serve the "
        f"random-weight demo model; {fix}, or pass --model tiny to serve the demo model on purpose"
    )


def check_quantize(quantize: str, device: str) -> None:
    """Raise ValueError saying why, unless `device` can run `--quantize quantize`: on
    CUDA a GPU of compute capability 8.9 or newer; on the CPU torch emulates float8
    matmuls (slow: for tests and the tiny model), which is allowed with a warning."""
    if quantize == "none":
        return
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ValueError("--quantize fp8 needs torchao: pip install 'z-image-turbo-service[fp8]'") from None
    if device != "cuda":
        log.warning(
            "--quantize fp8 on the %s: float8 matmuls are emulated there, slower than bfloat16; "
            "its speed needs a CUDA GPU of compute capability %s or newer",
            device,
            ".".join(map(str, FP8_MIN_CAPABILITY)),
        )
        return
    import torch

    capability = torch.cuda.get_device_capability()
    if capability < FP8_MIN_CAPABILITY:
        need = ".".join(map(str, FP8_MIN_CAPABILITY))
        name = torch.cuda.get_device_name()
        raise ValueError(
            f"--quantize fp8 needs compute capability {need} or newer (Ada, Hopper, Blackwell); "
            f"{name} is {capability[0]}.{capability[1]}. Use --quantize none"
        )


def resolve_model(spec: str, models_dir: Path, options: ModelOptions | None = None) -> ModelIdentity:
    """Turn `--model` (auto | tiny | <dir> | <hub id>) into local files and an identity.

    auto: the real model when CUDA is present, else the tiny demo model; but with an
    NVIDIA driver installed and a torch that cannot use it, CudaUnavailable (a GPU
    box must not quietly serve noise). A hub id is fetched into the Hugging Face
    cache (only the files the pipeline reads), or found there when offline.
    Raises ValueError naming the setting when the spec leads nowhere or the device
    cannot do `options.quantize`, or is a CUDA GPU without native bfloat16 (T4, V100).
    """
    options = options or ModelOptions()
    device, dtype = pick_device()
    if spec == "auto":
        if device != "cuda" and (driver := nvidia_driver()):
            raise CudaUnavailable(cuda_unusable_reason(driver))
        spec = HUB_ID if device == "cuda" else "tiny"
    check_model_spec(spec)
    if device == "cuda":
        check_bf16_gpu()
    check_quantize(options.quantize, device)
    if options.quantize == "fp8":
        dtype = "bfloat16"  # torchao's per-row float8 quantizes bfloat16 weights (the CPU too)
    local = Path(spec).expanduser()
    if spec == "tiny":
        path, model_id = ensure_tiny_model(models_dir), TINY_MODEL_ID
    elif local.is_dir():
        path, model_id = local, str(local.resolve())
    else:
        path, model_id = download(spec), spec
    demo = spec == "tiny"
    encoder_dtype = planned_encoder_dtype(path, dtype, options) if device == "cuda" else None
    return ModelIdentity(
        model_id=model_id,
        # By content, wherever the files are: a hub model's by its blobs' names.
        fingerprint=fingerprint_dir(path, DigestCache(models_dir / DIGESTS_FILE)),
        path=path,
        device=device,
        dtype=dtype,
        demo=demo,
        min_size=64 if demo else 256,
        quantize=options.quantize,
        text_encoder_dtype=encoder_dtype,
    )


def planned_encoder_dtype(path: Path, dtype: str, options: ModelOptions) -> str | None:
    """The text encoder's compute dtype (cpu_encoder_dtype) under the placement the
    GPU's free memory gives now; it is part of the cache key, so it is decided here,
    before loading. A load that then steps down to another mode (placement.step_down)
    keeps this dtype: the key stays true to the pixels."""
    import torch

    from pipeline.meta_memory import memory_needs
    from pipeline.placement import DoesNotFit, plan_placement

    try:
        plan = plan_placement(
            options.offload, "cuda", memory_needs(path, getattr(torch, dtype), options.quantize)
        )
    except DoesNotFit:
        return None  # the load fails with the same message
    return cpu_encoder_dtype(plan.mode, dtype)


def check_model_spec(spec: str) -> None:
    """Raise ValueError saying how to fix `spec` unless it can name a model."""
    if spec in ("auto", "tiny"):
        return
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ValueError(f"{spec} has no model_index.json; point it at a diffusers model directory")
        return
    if not _HUB_ID.fullmatch(spec):
        raise ValueError(
            f"{spec!r} is not auto, tiny, an existing directory, or a Hugging Face hub id like {HUB_ID}"
        )


def download(hub_id: str) -> Path:
    """Fetch the files of `hub_id` the pipeline reads (no other weight formats, no
    README assets) into the Hugging Face cache, or find them there when offline;
    returns the snapshot directory (named by the commit)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    index = Path(hf_hub_download(hub_id, "model_index.json"))
    revision = index.parent.name  # the snapshot's commit: both calls see the same files
    return Path(
        snapshot_download(
            hub_id,
            revision=revision,
            allow_patterns=pipeline_patterns(index),
            ignore_patterns=_UNUSED_WEIGHTS,
        )
    )


def load_pipeline(identity: ModelIdentity, options: ModelOptions | None = None) -> tuple[Any, Placement]:
    """Load the diffusers ZImagePipeline from local files, placed by `options.offload`
    (placement.py) and quantized as the identity says; returns it with the plan.
    Out of device memory while loading under `--offload auto`, it steps down to the
    next mode that fits (placement.step_down, logged). Raises placement.DoesNotFit
    when no mode fits the GPU's free memory."""
    import torch

    from pipeline.meta_memory import memory_needs
    from pipeline.placement import load_placed, plan_placement, step_down

    options = options or ModelOptions()
    quiet_progress_bars()
    dtype = getattr(torch, identity.dtype)
    needs = memory_needs(identity.path, dtype, identity.quantize) if identity.device == "cuda" else None
    plan = plan_placement(options.offload, identity.device, needs)
    log.info("%s", plan.describe())
    while True:
        try:
            pipe = load_placed(
                identity.path, dtype, plan, identity.quantize, getattr(torch, identity.encoder_dtype)
            )
            break
        except torch.OutOfMemoryError as exc:
            # Memory taken since the plan was made (another replica or process on the
            # card). Stepping down happens outside this block, once the traceback, which
            # holds the half-loaded components, is gone.
            error = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        assert needs is not None, "only a CUDA load runs out of device memory"
        plan = step_down(plan, needs, error)
        log.info("%s", plan.describe())
    pipe.set_progress_bar_config(disable=True)
    return pipe, plan


def is_demo_spec(spec: str) -> bool:
    """Whether `--model spec` will serve the tiny demo model (known before loading): not
    under auto on a machine with an NVIDIA driver, where auto refuses instead."""
    return spec == "tiny" or (spec == "auto" and pick_device()[0] != "cuda" and nvidia_driver() is None)
