"""Download all: the results shown, as one zip of their images under their download
names (`seed-42-a-red-fox.png`), built from the cache as the file route serves them.

The page (static/ui.js) asks `ZIP_ROUTE?f=<path>&f=<path>` with the gallery paths of
its results; each is checked as the file route checks it (`UiImages.fetch`: the
caller's namespace only). One missing, evicted, or another namespace's path refuses
the whole zip with the file route's 403, so the route tells nobody whether someone
else made an image. Nothing is written to disk: the zip is built in memory, its
images stored as they are (PNG and WebP are compressed already).
"""

from __future__ import annotations

import io
import zipfile
from typing import Protocol
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cache import Entry

ZIP_ROUTE = "/gradio_api/zimage/results.zip"
MAX_FILES = 64  # a results gallery holds a batch (at most MAX_UI_BATCH); the history's 48
ZIP_NAME = "z-image-results.zip"


class Images(Protocol):
    """What the zip needs of the page's images: web/ui_images.UiImages, which installs
    this route (so this module does not import it back)."""

    def owns(self, path: str) -> bool: ...

    async def fetch(self, caller_namespace: str | None, path: str) -> Entry | None: ...

    def download_name_of(self, path: str) -> str: ...


def unique(name: str, taken: set[str]) -> str:
    """`name`, or `name-2.png`, `name-3.png`... when it is already in the zip (two
    results of one seed and prompt: a hit and a bypass)."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    found, n = name, 1
    while found in taken:
        n += 1
        found = f"{stem}-{n}{dot}{ext}"
    taken.add(found)
    return found


async def zip_response(images: Images, namespace: str | None, request: Request) -> Response:
    """The zip of the paths `request` names (1 to MAX_FILES `f` parameters), each the
    caller's; 422 naming `f` for none or too many, 403 (the file route's answer) for
    one not the caller's or gone."""
    paths = parse_qs(request.url.query).get("f", [])
    if not 1 <= len(paths) <= MAX_FILES:
        return JSONResponse({"detail": f"f: give 1 to {MAX_FILES} image paths"}, status_code=422)
    archive, taken = io.BytesIO(), set[str]()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for path in paths:
            entry = await images.fetch(namespace, path) if images.owns(path) else None
            if entry is None:
                return JSONResponse({"detail": f"File not allowed: {path}."}, status_code=403)
            out.writestr(unique(images.download_name_of(path), taken), entry.data)
    headers = {
        "Cache-Control": "private, no-store",
        "Content-Disposition": f'attachment; filename="{ZIP_NAME}"',
    }
    return Response(archive.getvalue(), media_type="application/zip", headers=headers)
