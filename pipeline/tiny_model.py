"""The tiny model: the real Z-Image classes with tiny configs and fixed random weights.

It runs the real loading path (`save_pretrained` once, `from_pretrained` after)
and makes deterministic noise images fast on a CPU. Its shapes keep what sets
the cost of the real model: a 4-block VAE (downscale 8, 16 latent channels) and
patch size 2, so a 1024x1024 image is 4,096 image tokens, as in the real one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Bump when the configs below change, so an old build on disk is not reused.
TINY_VERSION = 1
TINY_MODEL_ID = f"tiny-z-image-v{TINY_VERSION}"

# Qwen3's chat template, reduced to what ZImagePipeline uses: one user turn,
# the generation prompt, and the optional empty think block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# The demo LoRA (issue 24): fixed random low-rank updates of the tiny transformer's
# main layers (attention q/k/v/out and feed-forward, what Z-Image LoRA trainers
# target), in diffusers' key format, strong enough to change the image visibly.
DEMO_LORA_VERSION = 1
DEMO_LORA_NAME = "tiny-demo"
DEMO_LORA_RANK = 4


def ensure_tiny_model(root: Path) -> Path:
    """Build the tiny model under `root` unless it is already there; return its directory.

    The build is written to a temp directory and renamed into place, so a crash
    or a concurrent build never leaves a half-written model behind.
    """
    target = root / TINY_MODEL_ID
    if (target / "model_index.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{TINY_MODEL_ID}."))
    try:
        _build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").exists():
                raise
            # Another process finished first; its build is identical.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built the tiny model in %s", target)
    return target


def ensure_demo_lora(root: Path) -> Path:
    """Build the demo LoRA for the tiny model under `root` unless it is there; return
    its file. Written to a temp file and renamed into place, like the model."""
    target = root / f"{DEMO_LORA_NAME}-v{DEMO_LORA_VERSION}.safetensors"
    if target.exists():
        return target
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    model = root / TINY_MODEL_ID / "transformer" / "config.json"
    generator = torch.Generator().manual_seed(7)
    tensors = {}
    for name, (rows, cols) in _lora_targets(model).items():
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(DEMO_LORA_RANK, cols, generator=generator)
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(rows, DEMO_LORA_RANK, generator=generator)
    fd, staging = tempfile.mkstemp(dir=root, prefix=f".{target.name}.")
    os.close(fd)
    try:
        save_file({k: v * 0.5 for k, v in tensors.items()}, staging)
        os.replace(staging, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staging)
    log.info("built the demo LoRA in %s", target)
    return target


def _lora_targets(config: Path) -> dict[str, tuple[int, int]]:
    """The demo LoRA's modules -> (out, in) features, from the tiny transformer's config
    (as `_build` makes it): the main layers' attention and feed-forward linears."""
    import json

    cfg = json.loads(config.read_text()) if config.exists() else {"dim": 32, "n_layers": 2}
    dim, layers = cfg["dim"], cfg["n_layers"]
    hidden = int(dim / 3 * 8)  # ZImage's FeedForward(dim, hidden_dim=int(dim / 3 * 8))
    targets = {}
    for i in range(layers):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            targets[f"layers.{i}.attention.{proj}"] = (dim, dim)
        targets[f"layers.{i}.feed_forward.w1"] = (hidden, dim)
        targets[f"layers.{i}.feed_forward.w2"] = (dim, hidden)
        targets[f"layers.{i}.feed_forward.w3"] = (hidden, dim)
    return targets


def _build(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _build_tokenizer()

    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
    )
    torch.manual_seed(1)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,
        axes_dims=[8, 4, 4],
        axes_lens=[1536, 512, 512],
    )
    # The pad tokens start at zero; give them values so padding is exercised
    # like trained weights would.
    with torch.no_grad():
        for param in transformer.parameters():
            if not param.any():
                param.normal_(0.0, 0.02)
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 16, 16],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, use_dynamic_shifting=False, shift=3.0
    )
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    from pipeline.placement import quiet_progress_bars

    quiet_progress_bars()
    pipe.save_pretrained(path)


def _build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A byte-level BPE with no merges: every UTF-8 byte is a token, so any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
