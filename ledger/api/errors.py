"""Every HTTP error the API gives: one JSON body, `{"error": "..."}`.

The message names what to fix, as the CLI's one-line errors do; for the
ledger's own errors it is the CLI's very message. A request that breaks an
invariant nobody foresaw is answered 500 with the same body, and the
traceback goes to the log, never to the caller.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ledger.api.responses import JsonResponse
from ledger.controls import ControlRefused
from ledger.errors import (
    LedgerError,
    LedgerUnavailable,
    RunHeld,
    UnknownRecord,
    UnknownRun,
)
from ledger.operations import RunKeptChanging
from ledger.rerun import PointUnreadable
from projections.effects import UnknownEffect

__all__ = [
    "ApiError",
    "ErrorBody",
    "error_responses",
    "install_error_handlers",
]

log = structlog.get_logger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="What went wrong, and how to fix it.")


class ApiError(Exception):
    """An error answered with this status and message."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_DESCRIPTIONS = {
    400: "The request cannot be applied as given.",
    401: "No bearer token, or one this server does not know.",
    403: "The token's role does not allow this call.",
    404: "No run (or endpoint) matches; the message says how to find one.",
    409: "The control makes no sense for the run as it stands; nothing was recorded.",
    413: "The request body is too large.",
    422: "A parameter or the body is invalid; the message names it.",
    503: "The ledger cannot be read or written right now.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error statuses, each with `ErrorBody`."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


# The ledger's own errors, most specific first.
_STATUS_OF: tuple[tuple[type[LedgerError], int], ...] = (
    (UnknownRun, 404),
    (UnknownRecord, 404),
    (UnknownEffect, 404),
    (PointUnreadable, 422),
    (LedgerUnavailable, 503),
    (ControlRefused, 409),
    (RunKeptChanging, 409),
    (RunHeld, 409),
)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(LedgerError, _on_ledger_error)
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


def _error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return JsonResponse({"error": message}, status_code=status, headers=headers)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.message, exc.headers)


async def _on_ledger_error(request: Request, exc: Exception) -> Response:
    status = next((code for kind, code in _STATUS_OF if isinstance(exc, kind)), 400)
    if status == 503:
        log.warning("ledger_unavailable", path=request.url.path, error=str(exc))
    return _error(status, str(exc))


async def _on_invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _error(422, "; ".join(_describe(item) for item in exc.errors()))


def _describe(item: Any) -> str:
    """'query parameter limit: Input should be less than or equal to 10000'.

    The offending value is left out: it may be huge, or junk.
    """
    where = [str(part) for part in item.get("loc", ())]
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    if item.get("type") == "json_invalid":
        return f"the body is not valid JSON; {_SEND_JSON}"
    if where[:1] == ["body"]:
        if len(where) == 1:
            return f"body: {message}; {_SEND_JSON}"
        return f"body field {'.'.join(where[1:])}: {message}"
    if len(where) >= 2:
        return f"{where[0]} parameter {'.'.join(where[1:])}: {message}"
    return message


_SEND_JSON = (
    'send a JSON object like {"reason": "..."} with the header '
    "`Content-Type: application/json`"
)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = (
            f"no endpoint at {request.url.path[:200]}; the endpoints are listed "
            "at /openapi.json"
        )
    elif exc.status_code == 405:
        message = (
            f"{request.method} is not allowed on {request.url.path[:200]}; "
            "the methods each endpoint takes are listed at /openapi.json"
        )
    elif exc.status_code == 400:
        # FastAPI's answer to a body that is not UTF-8, or not readable.
        message = f"{exc.detail}; {_SEND_JSON}"
    else:
        message = str(exc.detail)
    return _error(exc.status_code, message, dict(exc.headers or {}) or None)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error(
        "request_failed",
        method=request.method,
        path=request.url.path,
        exc_info=exc,
    )
    return _error(500, "the server failed on this request; its log says why")
