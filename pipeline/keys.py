"""What the cache keys of the pipeline cover: a generation's, and an encoding made from it.

A generation's key is `cache.make_key` (SHA-256 over canonical JSON, schema
version included) of sections, each one kind of thing that changes the pixels:

- `request`: the canonical request (pipeline/request.py), which holds no format;
- `model`: `ModelIdentity.key_fields()`: the weights by content, dtype,
  quantization, where the noise is drawn, how the text encoder computes;
- `inputs` (only when there are some): the request's other inputs by content,
  e.g. a LoRA as `{"sha256": ..., "scale": ...}` or an input image as the SHA-256
  of its decoded pixels, never by name. A section that is absent, not empty, for
  requests without inputs keeps their keys when new kinds of input arrive.

The output format is in none of them: one generation is stored once, as PNG, and
serves every format. A JPEG or WebP made from it is stored under `derived_key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cache import make_key
from pipeline.encoding import DERIVED_SETTINGS

if TYPE_CHECKING:
    from pipeline.loading import ModelIdentity
    from pipeline.request import CanonicalRequest


def generation_key(
    request: CanonicalRequest, identity: ModelIdentity, inputs: Mapping[str, Any] | None = None
) -> str:
    """The key of the image `identity`'s model makes for `request` (and `inputs`, by
    content hash: see the module docstring)."""
    fields: dict[str, Any] = {"request": request.as_dict(), "model": identity.key_fields()}
    if inputs:
        fields["inputs"] = dict(inputs)
    return make_key(fields)


def derived_key(key: str, ext: str) -> str:
    """The key of the `ext` encoding (jpeg, webp) of the stored image `key`: covers the
    image and the encoder's settings, so a new quality setting is a new entry."""
    return make_key({"derived": {"from": key, "format": ext, **DERIVED_SETTINGS[ext]}})
