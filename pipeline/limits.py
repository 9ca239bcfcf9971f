"""Every limit, default and list of choices of a request, defined once.

The request model (pipeline/request.py), the UI's widgets, the settings, the
OpenAI, A1111 and MCP routes and the README read these names; none writes a
number of its own.
"""

from __future__ import annotations

from typing import Literal, get_args

# Text: 2,000 characters, before and after normalisation.
MAX_PROMPT_CHARS = 2000
# Seeds are 32-bit; -1 asks for a random one (returned, so asking again hits).
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1
DEFAULT_SEED = 42
# Sizes: multiples of 16 (the VAE's 8 times the transformer's patch of 2). The
# official API allows 256..2048; the tiny demo model also accepts down to 64.
SIZE_MULTIPLE = 16
MIN_SIZE, MAX_SIZE = 64, 2048
REAL_MODEL_MIN_SIZE = 256
DEFAULT_SIZE = 1024
# Turbo is distilled for 8 steps and no classifier-free guidance.
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 50, 8
MAX_GUIDANCE, DEFAULT_GUIDANCE = 20.0, 0.0
# Images one call may ask for: the HTTP APIs (ours, OpenAI's, A1111's) and the UI.
MAX_API_BATCH = 8
MAX_UI_BATCH = 4
# Images the UI's history keeps (in the browser), newest first.
UI_HISTORY_LIMIT = 48
# Generation jobs allowed to wait for the model (a batch is one job); past that, 503.
DEFAULT_MAX_QUEUE = 64

ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
DEFAULT_FORMAT: ImageFormat = "png"
# Prompt canonicalisation (pipeline/request.py normalize_prompt); the first is the default.
Normalization = Literal["basic", "none", "aggressive"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
DEFAULT_NORMALIZATION: Normalization = "basic"
# LoRAs per request, and their scale (A1111's multiplier; negative subtracts the LoRA).
MAX_LORAS = 4
MAX_LORA_SCALE = 10.0
DEFAULT_LORA_SCALE = 1.0
