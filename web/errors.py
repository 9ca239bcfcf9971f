"""How the pipeline's failures reach a client: one table of status and code per
exception, read by the HTTP API's handlers, the OpenAI routes, the MCP tool and
the UI, so the same failure answers the same way everywhere.

The message is always the exception's own (pipeline/errors.py writes them to say
what to do); the status picks the HTTP code, the code names the failure for
protocols that carry one (OpenAI's `code`), and `retry` says whether waiting
helps (503 with `Retry-After`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from pipeline.errors import (
    GenerationFailed,
    JobCancelled,
    ModelUnavailable,
    QueueFull,
    RequestInvalid,
    validation_message,
)
from web.disconnect import ClientGone

RETRY_AFTER_S = 5
CLIENT_GONE = 499  # nginx's code for a request whose client closed the connection


@dataclass(frozen=True)
class Failure:
    """How one kind of failure is answered."""

    status: int
    code: str
    retry: bool = False

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)} if self.retry else {}


# Most specific first: the first class an exception is an instance of decides.
FAILURES: dict[type[Exception], Failure] = {
    RequestInvalid: Failure(422, "invalid_value"),  # ImageTooLarge included
    QueueFull: Failure(503, "queue_full", retry=True),
    ModelUnavailable: Failure(503, "model_unavailable", retry=True),  # shutting down, out of memory
    GenerationFailed: Failure(500, "generation_failed"),
    JobCancelled: Failure(CLIENT_GONE, "cancelled"),  # its own caller cancelled it (the UI's Cancel)
}
# What a route catches to answer with the table (anything else is a bug: a 500).
EXPECTED = tuple(FAILURES)


def failure_of(exc: BaseException) -> Failure:
    """The table's answer for `exc`, which must be one of EXPECTED."""
    return next(failure for kind, failure in FAILURES.items() if isinstance(exc, kind))


def field_errors(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """pydantic's errors as the API's 422 `detail`: type, where (`body`, `query` or
    `header`, then the field) and the message saying how to fix it."""
    return [{"type": e["type"], "loc": list(e["loc"]), "msg": validation_message(e)} for e in errors]


def user_message(exc: BaseException) -> str:
    """One line for a person (the UI, an MCP tool result): for bad input each field at
    fault, named where its message does not name it, and what to do; else the
    exception's own message."""
    if isinstance(exc, ValidationError):
        return "; ".join(_field_message(e) for e in exc.errors())
    return str(exc)


def _field_message(error: Any) -> str:
    msg = validation_message(error)
    field = ".".join(str(p) for p in error.get("loc", ()))
    return msg if field and field in msg else f"{field}: {msg}"


def install_error_handlers(app: FastAPI) -> None:
    """The API's answers for bad input (422 naming each field), a client that left,
    and every failure of the table (status, `Retry-After` where waiting helps)."""

    @app.exception_handler(RequestValidationError)
    async def unprocessable(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the pydantic context objects; keep what a
        # client needs: where, and what to change.
        return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)

    @app.exception_handler(RequestInvalid)
    async def invalid(request: Request, exc: RequestInvalid) -> JSONResponse:
        where = "header" if exc.field == "x-namespace" else "body" if request.method == "POST" else "query"
        detail = [{"type": "value_error", "loc": [where, exc.field], "msg": exc.message}]
        return JSONResponse({"detail": detail}, status_code=failure_of(exc).status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_GONE)  # nobody reads it (uvicorn drops it)

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        failure = failure_of(exc)
        return JSONResponse({"detail": str(exc)}, status_code=failure.status, headers=failure.headers())

    for kind in FAILURES:
        if kind is not RequestInvalid:
            app.add_exception_handler(kind, failed)
