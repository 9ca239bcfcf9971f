"""The generation request: fields, defaults, validation, and its canonical form."""

from __future__ import annotations

import math
import secrets
import unicodedata
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline import limits
from pipeline.errors import RequestInvalid
from pipeline.limits import ImageFormat, Normalization
from pipeline.lora import LoraSpec, check_lora_count, loras_field

# The fields that other protocols' request models share with ours (OpenAI's, A1111's):
# one definition each, with the limits in OpenAPI and in words.


def seed_field(default: int) -> Any:
    drawn = f"{limits.RANDOM_SEED}{' (the default)' if default == limits.RANDOM_SEED else ''} draws one"
    return Field(
        default,
        description=f"Random seed, 0..{limits.MAX_SEED}; {drawn} (returned in the response).",
        json_schema_extra={"minimum": limits.RANDOM_SEED, "maximum": limits.MAX_SEED},
    )


def steps_field() -> Any:
    return Field(
        limits.DEFAULT_STEPS,
        description=f"Denoising steps, {limits.MIN_STEPS}..{limits.MAX_STEPS} "
        f"(Turbo is distilled for {limits.DEFAULT_STEPS}).",
        json_schema_extra={"minimum": limits.MIN_STEPS, "maximum": limits.MAX_STEPS},
    )


def size_field(side: str) -> Any:
    """The field of a width or a height: the default, the limits in OpenAPI and in words."""
    return Field(
        limits.DEFAULT_SIZE,
        description=f"{side} in pixels, a multiple of {limits.SIZE_MULTIPLE}, {limits.MIN_SIZE}..{limits.MAX_SIZE} "
        f"({limits.REAL_MODEL_MIN_SIZE}.. for the real model).",
        json_schema_extra={
            "minimum": limits.MIN_SIZE,
            "maximum": limits.MAX_SIZE,
            "multipleOf": limits.SIZE_MULTIPLE,
        },
    )


class GenerationRequest(BaseModel):
    """What a user asks for. Defaults are the Turbo settings."""

    model_config = ConfigDict(extra="forbid")

    # json_schema_extra documents the limits in OpenAPI; the validators below
    # enforce them with messages that say how to fix the value.
    prompt: str = Field(
        description=f"What to draw; 1 to {limits.MAX_PROMPT_CHARS} characters.",
        json_schema_extra={"minLength": 1, "maxLength": limits.MAX_PROMPT_CHARS},
    )
    negative_prompt: str = Field(
        "",
        description=f"What to avoid; only used when guidance_scale > 0; up to {limits.MAX_PROMPT_CHARS} characters.",
        json_schema_extra={"maxLength": limits.MAX_PROMPT_CHARS},
    )
    seed: int = seed_field(limits.DEFAULT_SEED)
    width: int = size_field("Width")
    height: int = size_field("Height")
    steps: int = steps_field()
    guidance_scale: float = Field(
        limits.DEFAULT_GUIDANCE,
        description=f"Classifier-free guidance, 0..{limits.MAX_GUIDANCE:g} and finite; 0 turns it off (Turbo).",
        json_schema_extra={"minimum": 0, "maximum": limits.MAX_GUIDANCE},
    )
    format: ImageFormat = Field(
        limits.DEFAULT_FORMAT,
        description="Image encoding: png, jpeg or webp. Not part of the generation: one image "
        "serves all three (JPEG and WebP are made from the stored PNG).",
    )
    loras: list[LoraSpec] = loras_field()

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

    @field_validator("loras")
    @classmethod
    def _loras(cls, v: list[LoraSpec]) -> list[LoraSpec]:
        check_lora_count(v)
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v != limits.RANDOM_SEED and not 0 <= v <= limits.MAX_SEED:
            raise ValueError(
                f"seed must be {limits.RANDOM_SEED} (random) or between 0 and {limits.MAX_SEED} (got {v})"
            )
        return v

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: int, info: Any) -> int:
        check_size(info.field_name, v, limits.MIN_SIZE, limits.MAX_SIZE)
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if not limits.MIN_STEPS <= v <= limits.MAX_STEPS:
            raise ValueError(
                f"steps must be between {limits.MIN_STEPS} and {limits.MAX_STEPS} (got {v}); Turbo is made for {limits.DEFAULT_STEPS}"
            )
        return v

    @field_validator("guidance_scale")
    @classmethod
    def _guidance(cls, v: float) -> float:
        if not math.isfinite(v) or not 0.0 <= v <= limits.MAX_GUIDANCE:
            raise ValueError(
                f"guidance_scale must be a finite number between 0 and {limits.MAX_GUIDANCE:g} (got {v}); use 0 for Turbo"
            )
        return v

    def canonical(self, normalization: Normalization = limits.DEFAULT_NORMALIZATION) -> CanonicalRequest:
        """The request as it is hashed and generated: prompt normalised, seed drawn,
        fields that cannot change the pixels dropped (the format among them: it is
        how the pixels are delivered, `self.format`, not what they are)."""
        prompt = normalize_prompt(self.prompt, normalization)
        if not prompt:
            raise RequestInvalid("prompt", "prompt is empty after normalization; describe the image you want")
        # abs: -0.0 passes the 0..20 check and must be the same request (and key) as 0.
        guidance = abs(float(self.guidance_scale))
        negative = normalize_prompt(self.negative_prompt, normalization) if guidance > 0 else ""
        # The limit holds for what is hashed and generated: NFKC can expand a character
        # many times (U+FDFA is 18 characters), so check again after normalising.
        for field, text in (("prompt", prompt), ("negative_prompt", negative)):
            if len(text) > limits.MAX_PROMPT_CHARS:
                raise RequestInvalid(
                    field,
                    f"{field} is {len(text)} characters after {normalization} normalization; "
                    f"shorten it to at most {limits.MAX_PROMPT_CHARS}",
                )
        seed = random_seed() if self.seed == limits.RANDOM_SEED else self.seed
        return CanonicalRequest(
            prompt=prompt,
            negative_prompt=negative,
            seed=seed,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=guidance,
        )


@dataclass(frozen=True)
class CanonicalRequest:
    """A validated request in the exact form the model sees and the key covers: what
    changes the pixels, and nothing else (no output format)."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float

    def as_dict(self) -> dict[str, Any]:
        # Every field is a str or a number: no deep copy needed (dataclasses.asdict
        # makes one, and was a third of a memory hit's time in the service).
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_text(field: str, text: str) -> None:
    """Raise ValueError naming `field` for text that cannot be hashed, stored or shown:
    over limits.MAX_PROMPT_CHARS, a NUL, or an unpaired UTF-16 surrogate (valid in JSON as
    `"\\ud800"`, but not Unicode text, so it has no UTF-8 encoding)."""
    if len(text) > limits.MAX_PROMPT_CHARS:
        raise ValueError(
            f"{field} is {len(text)} characters; shorten it to at most {limits.MAX_PROMPT_CHARS}"
        )
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
    if value % limits.SIZE_MULTIPLE:
        down = max(low, value - value % limits.SIZE_MULTIPLE)
        up = min(high, down + limits.SIZE_MULTIPLE)
        raise RequestInvalid(
            field, f"{field} must be a multiple of {limits.SIZE_MULTIPLE} (got {value}); use {down} or {up}"
        )
    if not low <= value <= high:
        raise RequestInvalid(field, f"{field} must be between {low} and {high} for this model (got {value})")


def snap_size(value: int, low: int, high: int) -> int:
    """The valid size nearest to `value`: rounded to a multiple of 16 (halves up), then
    clamped to `low..high`. For protocols whose clients do not know our sizes
    (OpenAI's `size`, A1111's multiples of 8); our own routes refuse invalid sizes."""
    return min(
        high, max(low, (value + limits.SIZE_MULTIPLE // 2) // limits.SIZE_MULTIPLE * limits.SIZE_MULTIPLE)
    )


def random_seed() -> int:
    """A seed drawn for a request that asked for a random one (-1)."""
    return secrets.randbelow(limits.MAX_SEED + 1)


def normalize_prompt(text: str, mode: Normalization = limits.DEFAULT_NORMALIZATION) -> str:
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
