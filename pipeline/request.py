"""The generation request: fields, defaults, validation, and its canonical form."""

from __future__ import annotations

import math
import secrets
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SIZE_MULTIPLE = 16
# Absolute bounds; a model may narrow them (the real one starts at 256).
MIN_SIZE, MAX_SIZE = 64, 2048

ImageFormat = Literal["png", "jpeg", "webp"]
Normalization = Literal["basic", "none", "aggressive"]


class RequestInvalid(ValueError):
    """A request that cannot be served as asked; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class GenerationRequest(BaseModel):
    """What a user asks for. Defaults are the Turbo settings."""

    model_config = ConfigDict(extra="forbid")

    # json_schema_extra documents the limits in OpenAPI; the validators below
    # enforce them with messages that say how to fix the value.
    prompt: str = Field(
        description=f"What to draw; 1 to {MAX_PROMPT_CHARS} characters.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_PROMPT_CHARS},
    )
    negative_prompt: str = Field(
        "",
        description=f"What to avoid; only used when guidance_scale > 0; up to {MAX_PROMPT_CHARS} characters.",
        json_schema_extra={"maxLength": MAX_PROMPT_CHARS},
    )
    seed: int = Field(
        42,
        description=f"Random seed, 0..{MAX_SEED}; -1 draws one (returned in the response).",
        json_schema_extra={"minimum": -1, "maximum": MAX_SEED},
    )
    width: int = Field(
        1024,
        description=f"Width in pixels, a multiple of 16, {MIN_SIZE}..{MAX_SIZE} (256.. for the real model).",
        json_schema_extra={"minimum": MIN_SIZE, "maximum": MAX_SIZE, "multipleOf": SIZE_MULTIPLE},
    )
    height: int = Field(
        1024,
        description=f"Height in pixels, a multiple of 16, {MIN_SIZE}..{MAX_SIZE} (256.. for the real model).",
        json_schema_extra={"minimum": MIN_SIZE, "maximum": MAX_SIZE, "multipleOf": SIZE_MULTIPLE},
    )
    steps: int = Field(
        8,
        description="Denoising steps, 1..50 (Turbo is distilled for 8).",
        json_schema_extra={"minimum": 1, "maximum": 50},
    )
    guidance_scale: float = Field(
        0.0,
        description="Classifier-free guidance, 0..20 and finite; 0 turns it off (Turbo).",
        json_schema_extra={"minimum": 0, "maximum": 20},
    )
    format: ImageFormat = Field("png", description="Image encoding: png, jpeg or webp.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        check_text("prompt", v)
        if not v.strip():
            raise ValueError("prompt is empty; describe the image you want")
        return v

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt(cls, v: str) -> str:
        check_text("negative_prompt", v)
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v != -1 and not 0 <= v <= MAX_SEED:
            raise ValueError(f"seed must be -1 (random) or between 0 and {MAX_SEED} (got {v})")
        return v

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: int, info: Any) -> int:
        check_size(info.field_name, v, MIN_SIZE, MAX_SIZE)
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if not 1 <= v <= 50:
            raise ValueError(f"steps must be between 1 and 50 (got {v}); Turbo is made for 8")
        return v

    @field_validator("guidance_scale")
    @classmethod
    def _guidance(cls, v: float) -> float:
        if not math.isfinite(v) or not 0.0 <= v <= 20.0:
            raise ValueError(
                f"guidance_scale must be a finite number between 0 and 20 (got {v}); use 0 for Turbo"
            )
        return v

    def canonical(self, normalization: Normalization = "basic") -> CanonicalRequest:
        """The request as it is hashed and generated: prompt normalised, seed drawn,
        fields that cannot change the pixels dropped."""
        prompt = normalize_prompt(self.prompt, normalization)
        if not prompt:
            raise RequestInvalid("prompt", "prompt is empty after normalization; describe the image you want")
        # abs: -0.0 passes the 0..20 check and must be the same request (and key) as 0.
        guidance = abs(float(self.guidance_scale))
        negative = normalize_prompt(self.negative_prompt, normalization) if guidance > 0 else ""
        # The limit holds for what is hashed and generated: NFKC can expand a character
        # many times (U+FDFA is 18 characters), so check again after normalising.
        for field, text in (("prompt", prompt), ("negative_prompt", negative)):
            if len(text) > MAX_PROMPT_CHARS:
                raise RequestInvalid(
                    field,
                    f"{field} is {len(text)} characters after {normalization} normalization; "
                    f"shorten it to at most {MAX_PROMPT_CHARS}",
                )
        seed = secrets.randbelow(MAX_SEED + 1) if self.seed == -1 else self.seed
        return CanonicalRequest(
            prompt=prompt,
            negative_prompt=negative,
            seed=seed,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=guidance,
            format=self.format,
        )


@dataclass(frozen=True)
class CanonicalRequest:
    """A validated request in the exact form the model sees and the key covers."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    format: ImageFormat

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_text(field: str, text: str) -> None:
    """Raise ValueError naming `field` for text that cannot be hashed, stored or shown:
    over MAX_PROMPT_CHARS, a NUL, or an unpaired UTF-16 surrogate (valid in JSON as
    `"\\ud800"`, but not Unicode text, so it has no UTF-8 encoding)."""
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{field} is {len(text)} characters; shorten it to at most {MAX_PROMPT_CHARS}")
    if "\x00" in text:
        raise ValueError(f"{field} must not contain NUL characters; remove them")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field} contains an unpaired surrogate (U+{ord(text[exc.start]):04X}) at character "
            f"{exc.start}; send valid Unicode text"
        ) from None


def check_size(field: str, value: int, low: int, high: int) -> None:
    """Raise ValueError/RequestInvalid with the nearest valid sizes when `value` is not one."""
    if value % SIZE_MULTIPLE:
        down = max(low, value - value % SIZE_MULTIPLE)
        up = min(high, down + SIZE_MULTIPLE)
        raise RequestInvalid(field, f"{field} must be a multiple of 16 (got {value}); use {down} or {up}")
    if not low <= value <= high:
        raise RequestInvalid(field, f"{field} must be between {low} and {high} for this model (got {value})")


def snap_size(value: int, low: int, high: int) -> int:
    """The valid size nearest to `value`: rounded to a multiple of 16 (halves up), then
    clamped to `low..high`. For protocols whose clients do not know our sizes
    (OpenAI's `size`, A1111's multiples of 8); our own routes refuse invalid sizes."""
    return min(high, max(low, (value + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE))


def normalize_prompt(text: str, mode: Normalization = "basic") -> str:
    """Canonicalise prompt text; applied before hashing and before generation alike.

    basic: Unicode NFC, trimmed, runs of whitespace collapsed to one space.
    aggressive: also NFKC (full-width to half-width) and lower case.
    none: unchanged.
    """
    if mode == "none":
        return text
    form = "NFKC" if mode == "aggressive" else "NFC"
    text = " ".join(unicodedata.normalize(form, text).split())
    return text.lower() if mode == "aggressive" else text
