"""Absolute URLs the service hands out (OpenAI's `url`, MCP's): from `--public-url`
when it is set, else from the request, whose `Host` any client chooses."""

from __future__ import annotations

from starlette.requests import Request

# Where create_api keeps `--public-url` (app.state), for every route and MCP.
PUBLIC_URL_STATE = "public_url"


def absolute_url(request: Request, path: str) -> str:
    """`path` (absolute, from the root: `/images/<key>.png`) as a URL a client can
    fetch: under `--public-url` when set, whatever `Host` the request carried;
    otherwise under the request's own base URL (scheme, `Host`, root path)."""
    public = getattr(request.app.state, PUBLIC_URL_STATE, None)
    base = f"{public}/" if public else str(request.base_url)
    return f"{base}{path.lstrip('/')}"


def image_url(request: Request, path: str, namespace: str) -> str:
    """`absolute_url` of a stored image's `path`, signed for `namespace` when API
    keys are on (web/signed_urls.py), so a client without the token can fetch it."""
    signer = request.app.state.access.url_signer
    return absolute_url(request, signer.sign(path, namespace) if signer is not None else path)
