"""Image uploads: which routes take them, their body limit, and reading their forms in memory.

Only the image-input routes (UPLOAD_PATHS) accept bodies up to MAX_UPLOAD_BYTES;
every other route keeps web/body_limit.py's 64 KB. A multipart form is parsed
with Starlette's parser, its spool raised above the body limit: Starlette's
default spools a file part over 1 MB to a temporary file on disk, and an input
image is never written anywhere (pipeline/image_input.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pipeline.errors import RequestInvalid
from pipeline.image_input import MAX_UPLOAD_BYTES

EDIT_PATH = "/api/edit"
OPENAI_EDITS_PATH = "/v1/images/edits"
A1111_IMG2IMG_PATH = "/sdapi/v1/img2img"
A1111_TXT2IMG_PATH = "/sdapi/v1/txt2img"  # a ControlNet unit's image (web/a1111_controlnet.py)
UPLOAD_PATHS = (EDIT_PATH, OPENAI_EDITS_PATH, A1111_IMG2IMG_PATH, A1111_TXT2IMG_PATH)
# The body limit of the upload routes: the largest image, with room for the form around it.
UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES + (64 << 10)
# An image, a mask and a control image at most; a form's text fields are few and short.
MAX_FILES, MAX_FIELDS, MAX_FIELD_BYTES = 4, 32, 64 << 10


class InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with files kept in memory: the spool's rollover
    threshold is above the whole body's limit, so no part ever reaches the disk."""

    spool_max_size = UPLOAD_BODY_BYTES + 1


async def read_form(request: Request) -> FormData:
    """The request's multipart form, parsed in memory; RequestInvalid ("body") when it is
    not multipart or cannot be parsed."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestInvalid("body", "send the image as multipart/form-data")
    parser = InMemoryParser(
        request.headers,
        request.stream(),
        max_files=MAX_FILES,
        max_fields=MAX_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise RequestInvalid("body", f"the form could not be read: {exc.message}") from None


async def file_field(form: FormData, name: str, *, required: bool) -> bytes | None:
    """The bytes of the form's file `name` (a plain text field is refused); None when
    absent and not `required`, else RequestInvalid naming it."""
    value: Any = form.get(name)
    if value is None or (isinstance(value, UploadFile) and not value.filename and value.size == 0):
        if required:
            raise RequestInvalid(name, f"{name} is missing; attach a PNG, JPEG or WebP file")
        return None
    if not isinstance(value, UploadFile):
        raise RequestInvalid(name, f"{name} must be a file upload, not a text field")
    return await value.read()


def text_fields(form: FormData, names: set[str]) -> dict[str, str]:
    """The form's text fields among `names` (a file where text is expected is refused)."""
    fields = {}
    for name in names & set(form.keys()):
        value = form.get(name)
        if not isinstance(value, str):
            raise RequestInvalid(name, f"{name} must be a text field, not a file")
        fields[name] = value
    return fields
