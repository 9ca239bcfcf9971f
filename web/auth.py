"""Who may call what: API keys (`token namespace` lines), the admin token, and the
namespace every route acts in (the `Namespace` dependency)."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from cache import DEFAULT_NAMESPACE, bad_namespace, is_namespace
from pipeline.errors import RequestInvalid
from pipeline.line_files import read_lines
from web.signed_urls import UrlSigner

MIN_TOKEN_CHARS = 16
# Documents the bearer scheme in OpenAPI (on the routes that take a Namespace, and
# the admin routes); Access does the checking (and knows whether keys are on at all).
BEARER = HTTPBearer(
    auto_error=False, description="An API token from the --api-keys file (needed only when it is set)."
)


def read_api_keys(path: Path) -> dict[str, str]:
    """Parse an API-keys file: one `token namespace` a line, `#` comments. Raises
    ValueError naming the line for a malformed one, a short token or a duplicate."""
    keys: dict[str, str] = {}
    for number, line in read_lines(path):
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{path} line {number}: expected `token namespace`, found {len(fields)} fields")
        token, namespace = fields
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{path} line {number}: tokens need at least {MIN_TOKEN_CHARS} characters")
        if not is_namespace(namespace):
            raise ValueError(f"{path} line {number}: {bad_namespace(namespace)}")
        if token in keys:
            raise ValueError(f"{path} line {number}: this token is already listed")
        keys[token] = namespace
    if not keys:
        raise ValueError(f"{path} lists no keys; add lines `token namespace`")
    return keys


@dataclass(frozen=True)
class Access:
    """Who may call what. Without API keys every API route is open and the
    X-Namespace header picks the namespace; with them, the bearer token does."""

    api_keys: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None

    @cached_property
    def url_signer(self) -> UrlSigner | None:
        """Signs the image URLs OpenAI's route hands out, with keys only (without,
        anyone may fetch any image of the namespace they name)."""
        return UrlSigner(self.api_keys) if self.api_keys else None

    def namespace_for(self, token: str) -> str | None:
        # Compare against every token in constant time, so timing tells nothing.
        found = None
        for known, namespace in self.api_keys.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = namespace
        return found

    def caller_namespace(self, request: Request, header_namespace: str | None) -> str:
        """The namespace a request acts in; 401 without a valid token when keys are set,
        403 when X-Namespace names another namespace than the token's. HTTP Basic with
        the namespace as user name and the token as password counts as that token (the
        API auth that A1111 clients send, and the UI's login)."""
        if not self.api_keys:
            return header_namespace or DEFAULT_NAMESPACE
        token = bearer_token(request)
        basic = basic_credentials(request) if token is None else None
        if basic is not None:
            token = basic[1]
        if token is None:
            raise _unauthorized("this API needs `Authorization: Bearer <token>`")
        namespace = self.namespace_for(token)
        if namespace is None or (basic is not None and basic[0] != namespace):
            raise _unauthorized("unknown API token")
        if header_namespace not in (None, namespace):
            raise HTTPException(
                403, f"this token belongs to namespace {namespace!r}, not {header_namespace!r}"
            )
        return namespace

    def require_admin(self, request: Request) -> None:
        if not self.admin_token:
            raise HTTPException(403, "admin routes are off; start the server with --admin-token")
        token = bearer_token(request)
        if token is None:
            raise _unauthorized("this route needs `Authorization: Bearer <admin token>`")
        if not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            raise HTTPException(403, "this token is not the admin token")

    def ui_login(self, username: str, password: str) -> bool:
        """Gradio login: the namespace as user name, its token as password."""
        return bool(self.api_keys) and self.namespace_for(password) == username


async def caller_namespace(request: Request) -> str:  # async: FastAPI would run a def on a thread
    """The namespace a request acts in (and, with API keys, its authentication), by the
    `Access` in `app.state.access`. It reads the X-Namespace and Authorization headers
    itself: declared as parameters, FastAPI would resolve two more dependencies on
    every request (20 us of a 90 us cache hit); NamespacedRoute documents them."""
    x_namespace = request.headers.get("x-namespace")
    if x_namespace is not None and not is_namespace(x_namespace):
        raise RequestInvalid("x-namespace", bad_namespace(x_namespace, "X-Namespace"))
    return request.app.state.access.caller_namespace(request, x_namespace)


Namespace = Annotated[str, Depends(caller_namespace)]


async def image_namespace(request: Request) -> str:
    """`caller_namespace`, or with API keys, for a URL that carries a signature
    (`sig`), the namespace it grants without a token (web/signed_urls.py); 403
    saying why when it is expired or does not match."""
    signer = request.app.state.access.url_signer
    if signer is None or "sig" not in request.query_params:
        return await caller_namespace(request)
    try:
        return signer.check(request.path_params.get("name", ""), request.query_params)
    except ValueError as exc:
        raise HTTPException(403, str(exc)) from None


ImageNamespace = Annotated[str, Depends(image_namespace)]


async def ui_or_caller_namespace(request: Request) -> str:
    """`caller_namespace`, except that with API keys the UI's own login session counts
    too: the Gradio user that `app.state.ui_user` (set where the UI is mounted) finds
    for the request's session cookie, when no Authorization header is sent and the
    browser says the request comes from the page itself (`same_origin`). Gradio sets
    its cookie SameSite=None, so without that check any site could spend a logged-in
    person's namespace. Only the route the UI's image tab calls uses it (`/api/edit`)."""
    user_of = getattr(request.app.state, "ui_user", None)
    if user_of is not None and "authorization" not in request.headers and same_origin(request):
        user = user_of(request)
        if user is not None:
            x_namespace = request.headers.get("x-namespace")
            if x_namespace not in (None, user):
                raise HTTPException(403, f"this session belongs to namespace {user!r}, not {x_namespace!r}")
            return user
    return await caller_namespace(request)


UiOrCallerNamespace = Annotated[str, Depends(ui_or_caller_namespace)]


def same_origin(request: Request) -> bool:
    """Whether a browser sent the request from a page of this server: its
    `Sec-Fetch-Site` (which no page's script can set) is `same-origin`; a browser
    without it must send an `Origin` whose host is the request's `Host`."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin", "")
    return bool(origin) and origin.partition("://")[2] == request.headers.get("host")


NAMESPACE_HELP = "Cache namespace (default `public`); with API keys, the token's namespace."
# The OpenAPI parameter, as FastAPI writes a declared `x_namespace: Header()`.
NAMESPACE_HEADER = {
    "name": "x-namespace",
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": NAMESPACE_HELP,
        "title": "X-Namespace",
    },
    "description": NAMESPACE_HELP,
}


class NamespacedRoute(APIRoute):
    """The API's route class: a route that takes a Namespace lists in OpenAPI what
    `caller_namespace` reads, the X-Namespace header and the bearer token."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        namespaced = (caller_namespace, ui_or_caller_namespace, image_namespace)
        if any(dependency.call in namespaced for dependency in self.dependant.dependencies):
            extra = self.openapi_extra or {}
            self.openapi_extra = {
                **extra,
                "parameters": [*extra.get("parameters", []), NAMESPACE_HEADER],
                "security": [{BEARER.scheme_name: []}],
            }


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, or None."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon and password else None


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})
