"""`--quantize fp8`: which of the transformer's linear layers torchao quantizes to float8,
and how, without NaN and without touching process-wide compiler settings.

The recipe is torchao's `Float8DynamicActivationFloat8WeightConfig` with a scale per
row (weights quantized once, activations per call, both e4m3), applied to the
attention and feed-forward linears of the transformer's blocks (the noise and
context refiners and the main layers) only. The embedders (`t_embedder`,
`cap_embedder`, `x_embedder`), the adaLN modulations and the final layer stay in
bfloat16: they set every block's scale and shift or make the output, so their error
reaches every pixel, and their small matmuls gain nothing from float8.

Two changes to torchao's defaults, each for a defect seen on the tiny model:

- An activation lower bound. With guidance on and a prompt and negative prompt of
  different lengths, diffusers pads the shorter caption with zero rows; a row's scale
  is amax / 448, so a zero row got scale 0 and 0/0 = NaN, which masked attention then
  spread to the whole image (first in `context_refiner.0.attention.to_q`).
- `set_inductor_config=False`: torchao's default turns on coordinate-descent tuning
  (and more) for every compile in the process, ours and anyone else's.

The weights are quantized here rather than through `torchao.quantize_`, with the same
torchao tensor (`Float8Tensor.from_hp`) `quantize_` builds, because `quantize_`
asserts a CUDA GPU of compute capability 8.9: on the CPU torch's `_scaled_mm` runs
float8 matmuls emulated, which is what the tests and `bench.gpu --tiny` use
(tests/test_quantize.py checks the weights equal `quantize_`'s bit for bit).
"""

from __future__ import annotations

import re
from typing import Any

# amax below this counts as this when a row's scale is chosen (torchao's
# activation_value_lb): a zero row quantizes to zeros instead of 0/0. Far below any
# real activation, so no other row changes.
ACTIVATION_LOWER_BOUND = 1e-12
# The linears of the repeated blocks' attention and feed-forward: the model's bulk.
_TARGET = re.compile(r"(noise_refiner|context_refiner|layers)\.\d+\.(attention|feed_forward)\.")
# torch._scaled_mm needs both sides of a weight to be multiples of 16 (torchao skips others).
_FP8_MULTIPLE = 16


def is_fp8_target(name: str, module: Any) -> bool:
    """Whether the transformer's submodule `name` is quantized under fp8: a linear layer of
    a block's attention or feed-forward whose sides are multiples of 16."""
    import torch

    return (
        isinstance(module, torch.nn.Linear)
        and _TARGET.match(name) is not None
        and not (module.in_features % _FP8_MULTIPLE or module.out_features % _FP8_MULTIPLE)
    )


def fp8_config() -> Any:
    """torchao's config for the recipe above (per-row scales, the activation lower bound,
    inductor's settings left alone)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(),
        activation_value_lb=ACTIVATION_LOWER_BOUND,
        set_inductor_config=False,
    )


def quantize_fp8(transformer: Any, device: str) -> int:
    """Quantize the target linears of `transformer` (bfloat16) to float8, each moved to
    `device` first, then move the rest of the transformer there. Returns how many
    layers were quantized. The device check (compute capability 8.9 on CUDA) is
    loading.check_quantize's, made before."""
    import torch
    from torchao.quantization import Float8Tensor
    from torchao.quantization.quantize_.workflows import QuantizeTensorToFloat8Kwargs

    config = fp8_config()
    activation, weight = config.granularity
    activations = QuantizeTensorToFloat8Kwargs(
        config.activation_dtype,
        activation,
        hp_value_lb=config.activation_value_lb,
        hp_value_ub=config.activation_value_ub,
        kernel_preference=config.kernel_preference,
    )
    targets = [m for name, m in transformer.named_modules() if is_fp8_target(name, m)]
    for linear in targets:
        quantized = Float8Tensor.from_hp(
            linear.weight.detach().to(device),
            float8_dtype=config.weight_dtype,
            granularity=weight,
            mm_config=config.mm_config,
            kernel_preference=config.kernel_preference,
            act_quant_kwargs=activations,
        )
        linear.weight = torch.nn.Parameter(quantized, requires_grad=False)
    transformer.to(device)
    return len(targets)
