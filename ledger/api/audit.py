"""The audit reads: a run's incident report, and a job's runs as of a moment.

`GET /v1/runs/{run}/report` answers what `ledger report RUN --format F`
prints, and `GET /v1/jobs/{job}/status?as_of=TIME` what `ledger status
JOB --as-of TIME --json` prints, with the read permission of every other
read. Each catches the read tables up first, as the other reads do, then
reads the run's events from the store in a worker thread, so the event
loop stays free for other requests while a long run is folded.
"""

from __future__ import annotations

import asyncio
import unicodedata
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AfterValidator, BaseModel, Field
from starlette.responses import Response

from ledger.api.auth import require_viewer
from ledger.api.errors import error_responses
from ledger.api.params import RunParam
from ledger.api.responses import JsonResponse
from ledger.as_of import RunAsOf, finish_status_as_of, parse_as_of, plan_status_as_of
from ledger.report_source import load_report, read_report_subject
from ledger.report_text import CONTENT_SECURITY_POLICY, MEDIA_TYPES, render
from ledger.times import BadTime
from projections.reader import SharedReader

__all__ = ["ReportDocument", "router"]

router = APIRouter(
    prefix="/v1",
    tags=["reads"],
    dependencies=[Depends(require_viewer)],
    responses=error_responses(401, 422, 503),
    default_response_class=JsonResponse,
)

_MAX_JOB = 200
_MAX_TIME = 100

_NOT_A_TIME = (
    "is not a time: give ISO 8601 (2026-12-04, 2026-12-04T10:30, UTC unless an "
    "offset is given) or an age such as 30m, 2h, 3d or 1w"
)


def _plain_text(text: str) -> str:
    """Text a query can carry: PostgreSQL refuses NUL, and no driver can
    encode a lone surrogate."""
    if "\x00" in text:
        raise ValueError("holds a NUL character; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (a lone surrogate)") from None
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise ValueError("holds control characters; remove them")
    return text


def _moment_text(text: str) -> str:
    _plain_text(text)
    try:
        parse_as_of(text)
    except BadTime:
        raise ValueError(_NOT_A_TIME) from None
    return text


JobPath = Annotated[
    str,
    Path(min_length=1, max_length=_MAX_JOB, description="The job's name."),
    AfterValidator(_plain_text),
]

AsOfParam = Annotated[
    str,
    Query(
        min_length=1,
        max_length=_MAX_TIME,
        description="The moment: ISO 8601 (UTC unless it names an offset) or "
        "an age such as `3d`.",
    ),
    AfterValidator(_moment_text),
]

FormatParam = Annotated[
    Literal["json", "md", "html"],
    Query(
        alias="format",
        description="`json` (the document described here), `md` (Markdown) "
        "or `html` (one self-contained page).",
    ),
]


class ReportAction(BaseModel):
    """One operator decision: who, when, why, and about what."""

    at: str
    action: str | None
    by: str | None
    reason: str | None
    attempt: int | None
    target: str | None = Field(description="The record or effect it names.")
    summary: str


class ReportEntry(BaseModel):
    """One event of the timeline, and the run as it stood after it."""

    at: str
    stream: str = Field(description="`run`, or `effect` for an effect's stream.")
    stream_id: str
    version: int = Field(description="The event's place in its stream, from 1.")
    event: str = Field(description="The event type, as `schemas/` names it.")
    kind: str
    attempt: int | None
    by: str | None
    reason: str | None
    action: str | None
    target: str | None
    summary: str
    details: dict[str, Any] = Field(description="The event's recorded fields.")
    state: str
    resume_point: dict[str, Any] | None
    positions: dict[str, int]
    resume_moved: bool


class ReportDocument(BaseModel):
    """A run's incident report, as `ledger report RUN --format json`."""

    report_version: int
    run: dict[str, Any]
    outcome: dict[str, Any]
    attempts: list[dict[str, Any]]
    operator_actions: list[ReportAction]
    quarantine: list[dict[str, Any]]
    timeline: list[ReportEntry]
    events: dict[str, Any]


def _reader(request: Request) -> SharedReader:
    reader: SharedReader = request.app.state.reader
    return reader


_TEXT = {"schema": {"type": "string"}}


@router.get(
    "/runs/{run}/report",
    summary="A run's incident report: what ran, every event, every decision",
    description="As `ledger report RUN --format F`: the run's job, version, "
    "input and parameters; its timeline with the resume point after every "
    "event that moved it; every operator decision with who, when and why; "
    "and how it ended.",
    response_model=ReportDocument,
    responses={
        200: {"content": {"text/markdown": _TEXT, "text/html": _TEXT}},
        **error_responses(404),
    },
)
async def get_report(
    request: Request, run: RunParam, fmt: FormatParam = "json"
) -> Response:
    reader = _reader(request)
    subject = await reader.read(lambda db: read_report_subject(db, run))

    def build() -> str:
        return render(load_report(reader.location, subject), fmt)

    text = await asyncio.to_thread(build)
    headers = {"X-Content-Type-Options": "nosniff"}
    if fmt == "html":
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return Response(text, media_type=MEDIA_TYPES[fmt], headers=headers)


@router.get(
    "/jobs/{job}/status",
    summary="A job's runs as they stood at a past moment",
    description="As `ledger status JOB --as-of TIME --json`: the job's latest "
    "50 runs that had started by then, each with its state, attempts, last "
    "good checkpoint and resume point at that moment; empty when none had.",
    response_model=list[RunAsOf],
)
async def get_status_as_of(
    request: Request, job: JobPath, as_of: AsOfParam
) -> JsonResponse:
    reader = _reader(request)
    moment = parse_as_of(as_of)
    plan = await reader.read(lambda db: plan_status_as_of(db, job, moment))
    runs = await asyncio.to_thread(finish_status_as_of, reader.location, plan)
    return JsonResponse([found.as_dict() for found in runs])
