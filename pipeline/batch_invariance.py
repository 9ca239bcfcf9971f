"""Batched images equal to the ones made alone, byte for byte (batching across requests).

A matrix product's rounding can depend on how many rows it has: a library picks
another kernel (a matrix-vector product for one row, blocked products for more), and
with it another order of the additions. On this CPU (torch 2.13, MKL/oneDNN,
measured 2026-12-08) two places of a model call did: the transformer's linears over
one row per image (the timestep embedder's MLP, then every adaLN modulation fed by
it: 1 row alone, B rows in a batch of B) and the VAE decoder's first convolution
(batch 1 against B). The linears over an image's tokens (B x tokens rows) gave the
same bits for any B, and so did attention (each image's rows are their own), once
the captions pad to the same lengths (pipeline/batching.caption_profile).

So, as Thinking Machines' batch_invariant_ops and vLLM's / SGLang's deterministic
modes do by choosing kernels that do not change with the batch, the engine makes the
batch-dependent parts independent of it: `per_row_linears` computes a linear over a
2-D input row by row (B tiny products instead of one), and the pipeline decodes
latents one image at a time (pipeline/rendering.decode_latents). Under torch.compile
the linears run as one product (see RowByRowLinear.forward). On CUDA the large
products' kernel choice (split-K by row count in cuBLAS) may still depend on the
batch; that is unmeasured here (no GPU): bench/gpu.py should check it.
"""

from __future__ import annotations

import torch


class RowByRowLinear(torch.nn.Linear):
    """A linear that computes a 2-D input (rows of one vector per image) one row at a
    time, so a row's result does not depend on how many rows came with it; inputs with
    more dimensions (tokens) go through as one product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not inside torch.compile: a loop over the rows would specialise the compiled
        # graph on the batch size (a recompile per size), and inductor makes its own
        # kernels anyway, whose batch invariance is unmeasured (no GPU here).
        if x.dim() == 2 and x.shape[0] > 1 and not torch.compiler.is_compiling():
            return torch.cat([super(RowByRowLinear, self).forward(x[i : i + 1]) for i in range(x.shape[0])])
        return super().forward(x)


def per_row_linears(module: torch.nn.Module) -> int:
    """Make every plain linear of `module` a RowByRowLinear. Returns the number of
    linears changed. Idempotent.

    The class is changed, not each instance's `forward`: torch.compile compiles one
    transformer block's code for all blocks and guards on what it calls, so a
    function object per instance (a `functools.partial`) would recompile it for every
    block, while one class's method is the same for all."""
    changed = 0
    for linear in module.modules():
        if type(linear) is torch.nn.Linear:
            linear.__class__ = RowByRowLinear
            changed += 1
    return changed
