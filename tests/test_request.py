"""The request model: defaults, canonical form, normalisation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.errors import RequestInvalid
from pipeline.request import GenerationRequest, check_size, normalize_prompt


def test_defaults_are_the_turbo_settings() -> None:
    r = GenerationRequest(prompt="x")
    assert (r.seed, r.width, r.height, r.steps, r.guidance_scale, r.format) == (42, 1024, 1024, 8, 0.0, "png")


def test_negative_prompt_is_dropped_when_guidance_is_off() -> None:
    off = GenerationRequest(prompt="cat", negative_prompt="blurry").canonical()
    on = GenerationRequest(prompt="cat", negative_prompt="blurry", guidance_scale=4).canonical()
    assert off.negative_prompt == ""
    assert on.negative_prompt == "blurry"
    assert off == GenerationRequest(prompt="cat").canonical()


def test_random_seed_is_drawn_once_into_the_canonical_request() -> None:
    seeds = {GenerationRequest(prompt="x", seed=-1).canonical().seed for _ in range(20)}
    assert len(seeds) > 1
    assert all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        ("basic", "  a\t\tcat \n on  a mat ", "a cat on a mat"),
        ("basic", "cafe\u0301", "café"),  # NFC composes
        ("basic", "ＡＢＣ Cat", "ＡＢＣ Cat"),  # basic keeps full-width and case
        ("aggressive", "ＡＢＣ  Cat", "abc cat"),
        ("none", "  A  cat ", "  A  cat "),
    ],
)
def test_prompt_normalization_modes(mode: str, text: str, expected: str) -> None:
    assert normalize_prompt(text, mode) == expected  # type: ignore[arg-type]


def test_chinese_and_emoji_prompts_pass_through() -> None:
    assert GenerationRequest(prompt=" 一只猫 🐱 ").canonical().prompt == "一只猫 🐱"


def test_size_errors_suggest_the_nearest_valid_sizes() -> None:
    with pytest.raises(RequestInvalid, match="use 1008 or 1024"):
        check_size("width", 1020, 64, 2048)
    with pytest.raises(RequestInvalid, match="between 256 and 2048"):
        check_size("height", 128, 256, 2048)


def test_nul_in_prompt_is_refused() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        GenerationRequest(prompt="a\x00b")


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_unpaired_surrogates_are_refused_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} contains an unpaired surrogate \\(U\\+DC00\\)"):
        GenerationRequest(**{"prompt": "a fox", field: "a \udc00 fox"})


def test_the_length_limit_holds_after_normalization() -> None:
    GenerationRequest(prompt="\ufdfa" * 2000).canonical("basic")  # NFC keeps it one character
    with pytest.raises(RequestInvalid, match="36000 characters after aggressive normalization") as info:
        GenerationRequest(prompt="\ufdfa" * 2000).canonical("aggressive")
    assert info.value.field == "prompt"
    with pytest.raises(RequestInvalid) as info:
        GenerationRequest(prompt="x", negative_prompt="\ufdfa" * 200, guidance_scale=2).canonical(
            "aggressive"
        )
    assert info.value.field == "negative_prompt"


def test_negative_zero_guidance_is_zero() -> None:
    minus = GenerationRequest(prompt="x", guidance_scale=-0.0, negative_prompt="blur").canonical()
    assert minus == GenerationRequest(prompt="x").canonical()
    assert str(minus.guidance_scale) == "0.0"
