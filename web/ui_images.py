"""The UI's result images: served from the cache to their own namespace only, never
copied to disk.

Gradio shows an image by its server path, fetched through `/gradio_api/file=<path>`,
which serves any file of Gradio's temp directory to any logged-in user. So the UI
writes no file at all: its gallery paths point into a directory that does not
exist (`<private temp dir>/results/<namespace>/<key>/<name>.<ext>`), and
`UiImageRoute` answers the file route for that directory itself, from the cache,
after checking that the caller's namespace is the one in the path. Images that
must not be stored (bypass, do-not-cache prompts) are held in memory for a few
minutes, long enough for the browser to fetch them, and never written anywhere.

No word of a prompt is ever in a path, hence in a URL: URLs are logged, by us and
by any proxy in front, bypassed and do-not-cache prompts included. The last part
is only `seed-<n>.<ext>`. What a person saves the image as is still readable
(`seed-42-a-red-fox.png`): the gallery's download name (`ImagePath.download_name`,
which Gradio's Download button uses: see `SavedAs`) and the file route's `Content-Disposition`
both go to the browser only.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cache import DEFAULT_NAMESPACE, Entry, Hit, is_namespace
from pipeline.limits import IMAGE_FORMATS
from pipeline.results import GenerationResult
from pipeline.service import GenerationService
from web.ui_zip import ZIP_ROUTE, zip_response

# Gradio's file routes (gradio/routes.py: `/file={path_or_url:path}` and the older
# `/file/{path:path}`, under API_PREFIX).
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
# Unstored images wait this long, within this many bytes, for their first fetch.
UNSTORED_TTL_S = 300.0
UNSTORED_MAX_BYTES = 64 << 20
# <namespace>/<64-hex key>/<name>.<ext> for a stored entry, <32-hex token> for an unstored one.
_NAME = re.compile(
    r"(?P<ns>[^/]+)/(?:(?P<key>[0-9a-f]{64})|(?P<token>[0-9a-f]{32}))/(?P<name>[^/\x00]{1,80})"
    rf"\.(?P<ext>{'|'.join(IMAGE_FORMATS)})"
)
_WORD = re.compile(r"\w+")
NAME_CHARS = 48  # of the prompt, in a download name
# Download names remembered for Content-Disposition, by (namespace, key): the most
# recently shown ones (a few hundred bytes each). A forgotten one is `seed-<n>.<ext>`.
REMEMBERED_NAMES = 4096

NamespaceOf = Callable[[Request], "str | None"]


class ImagePath(str):
    """A gallery path (no prompt words in it) that carries the readable name a
    download should have; `for_gallery` hands both to Gradio."""

    download_name: str

    def __new__(cls, path: str, download_name: str) -> ImagePath:
        made = super().__new__(cls, path)
        made.download_name = download_name
        return made

    def __getnewargs__(self) -> tuple[str, str]:  # type: ignore[override]
        return (str(self), self.download_name)  # copies (gr.State's) keep the name


class UiImages:
    """Paths for the UI's gallery, and the images behind them.

    Guarantees: `unstored_path` writes nothing; `fetch` returns an image only to its own
    namespace, and answers "not yours" exactly like "not there" (None). Stored
    images are looked up in the cache (so they live as long as the entry);
    unstored ones are kept in memory only, at most `max_unstored_bytes` and
    `unstored_ttl_s`, oldest dropped first. Thread-safe.
    """

    def __init__(
        self,
        service: GenerationService,
        root: Path,
        *,
        unstored_ttl_s: float = UNSTORED_TTL_S,
        max_unstored_bytes: int = UNSTORED_MAX_BYTES,
    ) -> None:
        self.service = service
        self.root = Path(os.path.abspath(root))
        self.unstored_ttl_s = unstored_ttl_s
        self.max_unstored_bytes = max_unstored_bytes
        # token -> ns, entry, expiry, download name
        self._unstored: OrderedDict[str, tuple[str, Entry, float, str]] = OrderedDict()
        self._unstored_bytes = 0
        self._names: OrderedDict[tuple[str, str], str] = OrderedDict()  # (ns, key) -> download name
        self._lock = threading.Lock()

    def unstored_path(self, namespace: str, result: GenerationResult) -> ImagePath:
        """The gallery path of a result that must not be stored: by a fresh random
        token, its bytes kept here for the browser (a stored one's is `stored_path`)."""
        name = download_name(result.seed, result.request.prompt)
        token = secrets.token_hex(16)
        with self._lock:
            self._expire(time.monotonic())
            expiry = time.monotonic() + self.unstored_ttl_s
            self._unstored[token] = (namespace, result.entry, expiry, name)
            self._unstored_bytes += len(result.entry.data)
            while self._unstored_bytes > self.max_unstored_bytes and len(self._unstored) > 1:
                self._drop_oldest()
        ext = result.entry.ext
        return ImagePath(str(self.root / namespace / token / f"seed-{result.seed}.{ext}"), f"{name}.{ext}")

    def stored_path(self, namespace: str, key: str, ext: str, seed: int, prompt: str) -> ImagePath:
        """The gallery path of a stored entry (which `fetch` serves to `namespace` only);
        its download name is remembered for the file route's Content-Disposition."""
        name = download_name(seed, prompt)
        with self._lock:
            self._names[(namespace, key)] = name
            self._names.move_to_end((namespace, key))
            while len(self._names) > REMEMBERED_NAMES:
                self._names.popitem(last=False)
        return ImagePath(str(self.root / namespace / key / f"seed-{seed}.{ext}"), f"{name}.{ext}")

    def download_name_of(self, path: str) -> str:
        """What the browser should save the image at `path` (one of ours) as: the
        readable name given when its path was made, else the path's own last part."""
        match = _NAME.fullmatch(os.path.relpath(os.path.abspath(path), self.root))
        fallback = path.rsplit("/", 1)[-1]
        if match is None:
            return fallback
        with self._lock:
            if match["token"]:
                found = self._unstored.get(match["token"])
                name = found[3] if found is not None else None
            else:
                name = self._names.get((match["ns"], match["key"]))
        return f"{name}.{match['ext']}" if name else fallback

    def owns(self, path: str) -> bool:
        """Whether `path` (as Gradio's file route reads it) is in this directory."""
        target = os.path.abspath(path)
        return target.startswith(str(self.root) + os.sep)

    async def fetch(self, caller_namespace: str | None, path: str) -> Entry | None:
        """The image at `path` if it exists and belongs to `caller_namespace`, else None."""
        match = _NAME.fullmatch(os.path.relpath(os.path.abspath(path), self.root))
        if caller_namespace is None or match is None or match["ns"] != caller_namespace:
            return None
        if not is_namespace(caller_namespace):
            return None
        if match["token"]:
            with self._lock:  # (the name part says nothing about access: only ns and key/token)
                self._expire(time.monotonic())
                found = self._unstored.get(match["token"])
            if found is None or found[0] != caller_namespace or found[1].ext != match["ext"]:
                return None
            return found[1]
        hit = await self.service.lookup(caller_namespace, match["key"], match["ext"])
        if not isinstance(hit, Hit) or hit.entry.ext != match["ext"]:
            return None
        return hit.entry

    def unstored_stats(self) -> dict[str, int]:
        with self._lock:
            self._expire(time.monotonic())
            return {"entries": len(self._unstored), "bytes": self._unstored_bytes}

    def _expire(self, now: float) -> None:
        while self._unstored and next(iter(self._unstored.values()))[2] <= now:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (_, entry, _, _) = self._unstored.popitem(last=False)
        self._unstored_bytes -= len(entry.data)


class UiImageRoute:
    """ASGI middleware in front of Gradio: answers its file route for paths in the
    `UiImages` directory (anything else passes through to Gradio).

    The answer for an image that is missing, evicted, or another namespace's is
    Gradio's own for a missing file (403 "File not allowed: <path>."), so the
    route tells nobody whether someone else made an image.
    """

    def __init__(self, app: Any, images: UiImages, namespace_of: NamespaceOf) -> None:
        self.app = app
        self.images = images
        self.namespace_of = namespace_of

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path == ZIP_ROUTE and scope["method"] in ("GET", "HEAD"):  # Download all (web/ui_zip.py)
            request = Request(scope, receive)
            await (await zip_response(self.images, self.namespace_of(request), request))(scope, receive, send)
            return
        prefix = next((p for p in FILE_ROUTES if path.startswith(p)), None)
        if prefix is None or not self.images.owns(path[len(prefix) :]):
            await self.app(scope, receive, send)
            return
        target = path[len(prefix) :]
        request = Request(scope, receive)
        entry = await self.images.fetch(self.namespace_of(request), target)
        if entry is None:
            response: Response = JSONResponse({"detail": f"File not allowed: {target}."}, status_code=403)
        else:
            name = self.images.download_name_of(target)
            headers = {
                "Cache-Control": "private, max-age=3600",
                # What "Save image as" offers: the readable name (RFC 6266/5987 for non-ASCII).
                "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}",
            }
            body = b"" if scope["method"] == "HEAD" else entry.data
            response = Response(body, media_type=entry.media_type, headers=headers)
            if scope["method"] == "HEAD":
                response.headers["content-length"] = str(len(entry.data))
        await response(scope, receive, send)


def download_name(seed: int, prompt: str) -> str:
    """A file name (without extension) a person can read: `seed-42-a-red-fox`; the
    prompt's words (any script), lower case, joined by '-', cut at NAME_CHARS."""
    slug = "-".join(_WORD.findall(prompt.lower()))[:NAME_CHARS].strip("-_")
    return f"seed-{seed}-{slug}" if slug else f"seed-{seed}"


class SavedAs(type(Path())):  # type: ignore[misc]  # PosixPath (WindowsPath there)
    """A gallery path whose `name` is what the browser saves the image as.

    gr.Gallery takes a Path's `str()` for the image's URL and its `.name` for the
    download name (`orig_name`) its Download button saves under; so the URL keeps
    the path (no prompt words) and the download gets the readable name."""

    saved_as: str

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.saved_as


def for_gallery(path: ImagePath | str) -> Path:
    """`path` as gr.Gallery should be handed it (see `SavedAs`)."""
    shown = SavedAs(str(path))
    shown.saved_as = getattr(path, "download_name", None) or Path(path).name
    return shown


def namespace_of(request: Any) -> str:
    """The namespace of a UI event's caller (a `gr.Request`): its login with --api-keys,
    else the default one."""
    return getattr(request, "username", None) or DEFAULT_NAMESPACE


def gradio_user(app: Any) -> NamespaceOf:
    """The user name of the Gradio login session a request carries, or None.

    Mirrors gradio/routes.py `get_current_user` (the session cookie
    `access-token[-unsecure]-<cookie_id>` mapped to a user in `app.tokens`) for the
    Gradio app mounted in `app`, so the UI's file route knows its caller as the
    UI's events do (`gr.Request.username`).
    """
    from starlette.routing import Mount

    gradio_app = next(r.app for r in app.routes if isinstance(r, Mount) and hasattr(r.app, "tokens"))

    def user(request: Request) -> str | None:
        cookie = gradio_app.cookie_id
        token = request.cookies.get(f"access-token-{cookie}") or request.cookies.get(
            f"access-token-unsecure-{cookie}"
        )
        return gradio_app.tokens.get(token) if token else None

    return user
