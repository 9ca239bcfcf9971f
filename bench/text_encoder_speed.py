"""How long a new prompt's text encoding takes on this CPU, per compute dtype (issue 23, item 2).

Builds the real text encoder's configuration (bench/data) with `--layers` of its 36
layers and random weights, and times one forward over a prompt's real tokens in
bfloat16 (what text-encoder mode used on every CPU) and in float32 (what it uses
on a CPU without native bfloat16, pipeline/loading.cpu_encoder_dtype), best of
`--repeats`. Prints a line per dtype and token count, and the 36-layer estimate.
Run: python -m bench.text_encoder_speed [--layers 1] [--tokens 48,512] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.text_encoder_numerics import CONFIGS
from pipeline.loading import cpu_has_native_bf16

FULL_LAYERS = 36


def encoder(layers: int, dtype: torch.dtype) -> torch.nn.Module:
    """The real text encoder's configuration with `layers` layers, random weights in `dtype`."""
    from transformers import AutoConfig, Qwen3Model

    config = AutoConfig.from_pretrained(CONFIGS / "text_encoder")
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    return Qwen3Model(config).to(dtype).eval()


def seconds(model: torch.nn.Module, tokens: int, repeats: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            model(input_ids=ids)
            best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--tokens", default="48", help="comma-separated prompt lengths (default 48)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"native bfloat16 on this CPU: {cpu_has_native_bf16()}; {args.threads} threads; {args.layers} layer(s)"
    )
    for dtype in (torch.bfloat16, torch.float32):
        model = encoder(args.layers, dtype)
        for tokens in (int(t) for t in args.tokens.split(",")):
            took = seconds(model, tokens, args.repeats) / args.layers
            print(
                f"{dtype!s:<16} {tokens:>4} tokens  {took:8.3f} s a layer  (x{FULL_LAYERS}: {took * FULL_LAYERS:7.1f} s)"
            )
        del model


if __name__ == "__main__":
    main()
