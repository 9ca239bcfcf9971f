"""What the model needs in device memory, computed on the `meta` device: parameter
bytes per component and the peak of the tensors a forward pass keeps alive.

Nothing is allocated and nothing is computed: `meta` tensors carry shapes and
dtypes only, so the full-size model's figures come in a second or two on any
machine. The figures are tensor bytes. They leave out what only a GPU shows: the
CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's rounding and
fragmentation (placement.py keeps a margin for those).
"""

from __future__ import annotations

import importlib
import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.fp8 import is_fp8_target

COMPONENTS = ("transformer", "text_encoder", "vae")
# The request the working memory is sized for: the service's default size, with
# guidance on (the transformer then runs a batch of two) and a prompt of the
# longest length the service encodes.
REFERENCE_SIZE = 1024
REFERENCE_CAPTION_TOKENS = 512


@dataclass(frozen=True)
class MemoryNeeds:
    """Device bytes of one model, from its configs alone.

    weights: resident bytes per component (parameters and buffers, in the load
    dtype, the transformer's linear weights in one byte each under fp8).
    largest_module: the largest single module's own parameters (what sequential
    offload holds on the device at once, besides activations).
    transformer_work / decode_work: peak activation bytes of one reference
    image's denoising step (with guidance) and of its VAE decode (one tile).
    streamed: device bytes per component while it runs streamed by group
    offloading (`streamed_bytes`).
    """

    weights: dict[str, int]
    largest_module: int
    transformer_work: int
    decode_work: int
    streamed: dict[str, int]

    @property
    def work(self) -> int:
        """Activations at their peak: the denoising and the decode never overlap."""
        return max(self.transformer_work, self.decode_work)


def build_on_meta(model_dir: Path, name: str, dtype: Any) -> Any:
    """Component `name` of the diffusers model in `model_dir`, built from its config
    on the meta device in `dtype` (the class comes from model_index.json)."""
    import torch

    library, class_name = json.loads((model_dir / "model_index.json").read_text())[name]
    cls = getattr(importlib.import_module(library), class_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            if library == "transformers":
                from transformers import AutoConfig

                return cls(AutoConfig.from_pretrained(model_dir / name))
            return cls.from_config(cls.load_config(model_dir / name))
    finally:
        torch.set_default_dtype(previous)


def memory_needs(model_dir: Path, dtype: Any, quantize: str = "none") -> MemoryNeeds:
    """Everything placement.py weighs, for the model whose configs are in `model_dir`
    (weights need not be there: bench/data/z-image-turbo-configs has only configs)."""
    modules = {name: build_on_meta(model_dir, name, dtype) for name in COMPONENTS}
    weights = {
        name: module_bytes(module, fp8=quantize == "fp8" and name == "transformer")
        for name, module in modules.items()
    }
    largest = max(
        sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
        for module in modules.values()
        for m in module.modules()
    )
    transformer_work = transformer_peak(
        modules["transformer"], REFERENCE_SIZE, batch=2, caption_tokens=REFERENCE_CAPTION_TOKENS
    )
    vae = modules["vae"]
    vae.enable_tiling()  # as on CUDA: a side over the tile size is decoded tile by tile
    decode_work = decode_peak(vae, REFERENCE_SIZE)
    streamed = {name: streamed_bytes(module) for name, module in modules.items()}
    return MemoryNeeds(weights, largest, transformer_work, decode_work, streamed)


def streamed_bytes(module: Any) -> int:
    """Device bytes diffusers' block-level group offloading with streams holds of
    `module` while it runs (pipeline/placement.py's `model` mode): its top-level
    ModuleList/Sequential children are groups of one block each, and the rest (the
    embeddings, norms; a VAE whole) one group kept on the device for the module's
    whole forward; with streams the next block arrives while one computes, so two
    blocks at once. An upper bound for modules whose own block list diffusers
    recurses into (the VAE's `_group_offload_block_modules`)."""
    import torch

    blocks = [
        module_bytes(block)
        for child in module.children()
        if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential)
        for block in child
    ]
    largest = sorted(blocks, reverse=True)[:2]
    return module_bytes(module) - sum(blocks) + sum(largest)


def module_bytes(module: Any, *, fp8: bool = False) -> int:
    """Parameter and buffer bytes; with `fp8`, the weights of the linears fp8 quantizes
    (pipeline.fp8.is_fp8_target) count one byte per value plus a float32 scale per row."""
    total = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if fp8:
        for name, m in module.named_modules():
            if is_fp8_target(name, m):
                total -= m.weight.numel() * (m.weight.element_size() - 1) - m.out_features * 4
    return total


def transformer_peak(transformer: Any, size: int, *, batch: int, caption_tokens: int) -> int:
    """Peak activation bytes of one forward of a meta-device transformer at `size`x`size`."""
    import torch

    channels, latent = transformer.config.in_channels, size // 8
    dtype = next(transformer.parameters()).dtype
    x = [torch.empty(channels, 1, latent, latent, device="meta", dtype=dtype) for _ in range(batch)]
    caps = [
        torch.empty(caption_tokens, transformer.config.cap_feat_dim, device="meta", dtype=dtype)
        for _ in range(batch)
    ]
    t = torch.full((batch,), 0.5, device="meta")
    with peak_bytes(transformer, x, caps, t) as peak:
        transformer(x, t, caps, return_dict=False)
    return peak.value


def decode_peak(vae: Any, size: int) -> int:
    """Peak activation bytes of decoding one `size`x`size` image with a meta-device VAE."""
    import torch

    dtype = next(vae.parameters()).dtype
    z = torch.empty(1, vae.config.latent_channels, size // 8, size // 8, device="meta", dtype=dtype)
    with peak_bytes(vae, z) as peak:
        vae.decode(z, return_dict=False)
    return peak.value


class _Peak:
    value = 0


@contextmanager
def peak_bytes(module: Any, *inputs: Any) -> Iterator[_Peak]:
    """Track the bytes of tensors created inside the block and alive at once; the
    highest count is `.value` when the block ends. Storages of `module`'s weights
    and of `inputs` existed before and are not counted. Attention is counted as a
    fused kernel (flash, cuDNN or memory-efficient) does it on CUDA: the output
    only, never the sequence x sequence score matrix the meta device would build."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    peak = _Peak()
    known = [t.untyped_storage() for t in (*module.parameters(), *module.buffers())]
    known += [t.untyped_storage() for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    seen = {id(s) for s in known}
    live = [0]

    def freed(key: int, nbytes: int) -> None:
        seen.discard(key)
        live[0] -= nbytes

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()  # one Python object per storage, kept while it lives
                    if id(storage) not in seen:
                        seen.add(id(storage))
                        live[0] += storage.nbytes()
                        peak.value = max(peak.value, live[0])
                        weakref.finalize(storage, freed, id(storage), storage.nbytes())
            return out

    class FusedAttention(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func is torch.nn.functional.scaled_dot_product_attention:
                query = args[0] if args else kwargs["query"]
                value = args[2] if len(args) > 2 else kwargs["value"]
                return query.new_empty(*query.shape[:-1], value.shape[-1])
            return func(*args, **kwargs)

    with torch.no_grad(), FusedAttention(), Count():
        yield peak
