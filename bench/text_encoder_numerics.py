"""How much where the text encoder computes changes embeddings and pixels (issue 22, item 4).

Compares, on this CPU, the text encoder computing in float32 against bfloat16
(the GPU's dtype, and the CPU's in text-encoder mode), and prompts padded to
512 tokens against unpadded ones:

  tiny        the demo model end to end: embedding error, and the pixels of a
              64x64 image made from each embedding (same seed, float32 otherwise)
  real-width  the real text encoder's configuration (bench/data) shrunk to 4 of
              its 36 layers, random weights rounded to bfloat16 as a checkpoint
              holds them: embedding error at the real width

Prints a table; the figures back the choice in README's "How caching works".
Run: python -m bench.text_encoder_numerics
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from bench.procs import ROOT
from pipeline.embeddings import MAX_SEQUENCE_LENGTH
from pipeline.tiny_model import ensure_tiny_model

PROMPTS = ["a red fox in the snow", "一只猫坐在窗台上，午后阳光", "a lighthouse at dusk, oil painting, " * 6]
CONFIGS = ROOT / "bench" / "data" / "z-image-turbo-configs"


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max over prompts of ||a - b|| / ||a||."""
    return max(float((x.float() - y.float()).norm() / x.float().norm()) for x, y in zip(a, b, strict=True))


def encode(pipe, text: str, pad: bool) -> torch.Tensor:
    """The pipeline's own prompt encoding (chat template, hidden state -2, real tokens
    only), with or without padding the batch to MAX_SEQUENCE_LENGTH."""
    messages = [{"role": "user", "content": text}]
    templated = pipe.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    tokens = pipe.tokenizer(
        [templated],
        padding="max_length" if pad else False,
        max_length=MAX_SEQUENCE_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    mask = tokens.attention_mask.bool()
    with torch.no_grad():
        hidden = pipe.text_encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states[-2]
    return hidden[0][mask[0]]


def pixels(pipe, embeds: torch.Tensor) -> torch.Tensor:
    image = pipe(
        prompt_embeds=[embeds.float()],
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    ).images[0]
    return torch.from_numpy((image * 255).round().clip(0, 255)).to(torch.uint8)


def tiny() -> dict[str, float]:
    from diffusers import ZImagePipeline

    with tempfile.TemporaryDirectory() as models:
        pipe = ZImagePipeline.from_pretrained(ensure_tiny_model(Path(models)), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    fp32 = [encode(pipe, p, pad=True) for p in PROMPTS]
    unpadded = [encode(pipe, p, pad=False) for p in PROMPTS]
    pipe.text_encoder.to(torch.bfloat16)
    bf16 = [encode(pipe, p, pad=True) for p in PROMPTS]
    bf16_unpadded = [encode(pipe, p, pad=False) for p in PROMPTS]
    pipe.text_encoder.to(torch.float32)
    diffs = [(pixels(pipe, a).int() - pixels(pipe, b).int()).abs() for a, b in zip(fp32, bf16, strict=True)]
    pad_diffs = [
        (pixels(pipe, a).int() - pixels(pipe, b).int()).abs() for a, b in zip(fp32, unpadded, strict=True)
    ]
    return {
        "embeddings fp32 vs bf16 (rel. error)": relative_error(fp32, bf16),
        "embeddings fp32 padded vs unpadded": relative_error(fp32, unpadded),
        "embeddings bf16 padded vs unpadded": relative_error(bf16, bf16_unpadded),
        "pixels fp32 vs bf16 encoder: max |diff| (0-255)": float(max(d.max() for d in diffs)),
        "pixels fp32 vs bf16 encoder: share of values that differ": float(
            sum((d > 0).sum() for d in diffs) / sum(d.numel() for d in diffs)
        ),
        "pixels fp32 padded vs unpadded: max |diff|": float(max(d.max() for d in pad_diffs)),
    }


def real_width(layers: int = 4, tokens: int = 96) -> dict[str, float]:
    from transformers import Qwen3Config, Qwen3Model

    config = json.loads((CONFIGS / "text_encoder" / "config.json").read_text())
    config.update(
        num_hidden_layers=layers, vocab_size=4096
    )  # the embedding table's size changes nothing here
    torch.manual_seed(0)
    model = Qwen3Model(Qwen3Config(**config)).eval()
    model.to(torch.bfloat16).to(torch.float32)  # weights as a bf16 checkpoint holds them
    ids = torch.randint(0, 4096, (1, tokens))
    padded = torch.cat([ids, torch.zeros(1, 160, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, tokens, dtype=torch.long), torch.zeros(1, 160, dtype=torch.long)], dim=1)
    with torch.no_grad():
        fp32 = model(input_ids=ids, output_hidden_states=True).hidden_states[-2][0]
        fp32_padded = model(input_ids=padded, attention_mask=mask, output_hidden_states=True).hidden_states[
            -2
        ][0]
        model.to(torch.bfloat16)
        bf16 = model(input_ids=ids, output_hidden_states=True).hidden_states[-2][0]
        bf16_padded = model(input_ids=padded, attention_mask=mask, output_hidden_states=True).hidden_states[
            -2
        ][0]
    return {
        f"real width, {layers} layers: fp32 vs bf16 (rel. error)": relative_error([fp32], [bf16]),
        f"real width, {layers} layers: fp32 padded vs unpadded": relative_error(
            [fp32], [fp32_padded[:tokens]]
        ),
        f"real width, {layers} layers: bf16 padded vs unpadded": relative_error(
            [bf16], [bf16_padded[:tokens]]
        ),
    }


def main() -> int:
    torch.set_num_threads(2)
    rows = {**tiny(), **real_width()}
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
