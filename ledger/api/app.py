"""The HTTP API's application: reads, controls, metrics and health.

Reads and controls need a bearer token (see `ledger.api.auth`);
`/healthz`, `/metrics` and `/openapi.json` do not: they say nothing about
any run's data, parameters or payloads, and probes and scrapers rarely
carry tokens. Every error is `{"error": "..."}` (see `ledger.api.errors`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

import structlog
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.api.audit import router as audit_router
from ledger.api.auth import Tokens
from ledger.api.controls import CONTROLS, Control, control_router
from ledger.api.errors import install_error_handlers
from ledger.api.metrics import LedgerMetrics
from ledger.api.reads import router as reads_router
from ledger.api.responses import JsonResponse
from ledger.config import LedgerLocation
from projections.reader import SharedReader

__all__ = ["MAX_BODY_BYTES", "create_app"]

log = structlog.get_logger(__name__)

# A control's body is a reason of a few hundred characters.
MAX_BODY_BYTES = 64 * 1024

_DESCRIPTION = """\
The recovery ledger over HTTP: the same reads as `ledger status`,
`history`, `explain` and `quarantine list` (the same JSON documents as
their `--json`), and operator controls recorded with the token's name.

Authenticate with `Authorization: Bearer TOKEN`, a token from the server's
tokens file. A `viewer` token may read; an `operator` token may also apply
controls. Every error answers `{"error": "..."}`, a message that names what
to fix.
"""


def create_app(
    location: LedgerLocation,
    tokens: Tokens,
    *,
    controls: tuple[Control, ...] = CONTROLS,
) -> FastAPI:
    """The API for the ledger at `location`, open to the holders of `tokens`."""
    reader = SharedReader(location)
    metrics = LedgerMetrics(reader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await reader.close()

    app = FastAPI(
        title="recovery-ledger",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.reader = reader
    app.state.tokens = tokens
    install_error_handlers(app)
    app.add_middleware(_RequestLog)
    app.include_router(reads_router)
    app.include_router(audit_router)
    app.include_router(control_router(controls))

    @app.get(
        "/healthz",
        tags=["service"],
        summary="Whether the server is up (it does not read the ledger)",
        response_class=JsonResponse,
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["service"],
        summary="Prometheus metrics, read from the ledger at scrape time",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text exposition format.",
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def get_metrics(request: Request) -> Response:
        body, content_type = await metrics.render(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    return app


def _version() -> str:
    try:
        return metadata.version("recovery-ledger")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class _RequestLog:
    """Logs each request (never its headers), and caps request bodies.

    uvicorn's own access log is off: this one goes through the ledger's
    logging, names the caller by the token's name, and leaves tokens out.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if _declared_size(scope) > MAX_BODY_BYTES:
                await _too_large()(scope, receive, sending)
            else:
                await self.app(scope, _capped(receive), sending)
        finally:
            # Status 0: the app sent no answer, because it failed (the
            # caller then gets a 500, see `ledger.api.errors`) or the
            # client left first.
            caller = scope.get("state", {}).get("caller")
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"][:200],
                status=status[0],
                caller=caller,
                ms=round((time.monotonic() - started) * 1000, 1),
            )


_TOO_LARGE = (
    f"the request body is larger than {MAX_BODY_BYTES:,} bytes; a control "
    'takes a JSON object with a short reason, like {"reason": "..."}'
)


def _too_large() -> Response:
    return JsonResponse({"error": _TOO_LARGE}, status_code=413)


def _declared_size(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _capped(receive: Receive) -> Receive:
    """Stops reading a body sent without a length once it is too large."""
    seen = [0]

    async def receiving() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > MAX_BODY_BYTES:
                # FastAPI passes an HTTPException raised while it reads the
                # body on to the error handlers; any other error becomes 400.
                raise StarletteHTTPException(413, _TOO_LARGE)
        return message

    return receiving
