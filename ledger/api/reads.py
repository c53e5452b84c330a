"""The read endpoints: what `ledger status`, `history`, `explain` and
`quarantine list` show, as the same JSON documents their `--json` prints.

Every read catches the read tables up with the log first, as a read
command does, so an answer is never older than the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, Depends, Request

from ledger.api.auth import require_viewer
from ledger.api.documents import ExplainDocument, HistoryDocument, QuarantineDocument
from ledger.api.errors import error_responses
from ledger.api.params import (
    EffectParam,
    EffectStateParam,
    JobParam,
    LimitParam,
    RunParam,
    RunQuery,
    StateParam,
)
from ledger.api.responses import JsonResponse
from ledger.policy import read_policy
from projections.database import ReadDatabase
from projections.documents import (
    explain_document,
    history_document,
    quarantine_document,
    read_quarantine,
    read_run_and_attempts,
    status_document,
)
from projections.effects import EffectListing, EffectRow, find_effect, read_effects
from projections.reader import SharedReader
from projections.views import RunView, find_run, list_runs

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["reads"],
    dependencies=[Depends(require_viewer)],
    responses=error_responses(401, 422, 503),
    default_response_class=JsonResponse,
)

_RUN_ERRORS = error_responses(404)


T = TypeVar("T")


def _reader(request: Request) -> SharedReader:
    reader: SharedReader = request.app.state.reader
    return reader


async def _read(request: Request, query: Callable[[ReadDatabase], Awaitable[T]]) -> T:
    """Answers the query with the ledger's policy put in force, read on the
    same connection: every response is guarded by it (see
    `ledger.api.responses`)."""

    async def with_policy(db: ReadDatabase) -> T:
        await read_policy(db)
        return await query(db)

    return await _reader(request).read(with_policy)


@router.get(
    "/runs",
    summary="Every job's latest run and every unfinished one (or one job's runs)",
    description="As `ledger status [JOB] --json`: with `job`, that job's last 50 "
    "runs, newest first.",
    response_model=list[RunView],
)
async def get_runs(request: Request, job: JobParam = None) -> JsonResponse:
    chosen = job or None
    runs = await _read(request, lambda db: list_runs(db, chosen))
    return JsonResponse(status_document(runs))


@router.get(
    "/runs/{run}",
    summary="One run: state, last good checkpoint, resume point, quarantine",
    description="The `run` object of `ledger history RUN --json`.",
    response_model=RunView,
    responses=_RUN_ERRORS,
)
async def get_run(request: Request, run: RunParam) -> JsonResponse:
    found = await _read(request, lambda db: find_run(db, run))
    return JsonResponse(found.as_dict())


@router.get(
    "/runs/{run}/history",
    summary="The attempt history of one run",
    description="As `ledger history RUN --json`.",
    response_model=HistoryDocument,
    responses=_RUN_ERRORS,
)
async def get_history(request: Request, run: RunParam) -> JsonResponse:
    found, attempts = await _read(request, lambda db: read_run_and_attempts(db, run))
    return JsonResponse(history_document(found, attempts))


@router.get(
    "/runs/{run}/explain",
    summary="One sentence: what failed, where it resumes, the command to run",
    description="As `ledger explain RUN --json`.",
    response_model=ExplainDocument,
    responses=_RUN_ERRORS,
)
async def get_explanation(request: Request, run: RunParam) -> JsonResponse:
    found, attempts = await _read(request, lambda db: read_run_and_attempts(db, run))
    return JsonResponse(explain_document(found, attempts))


@router.get(
    "/quarantine",
    summary="Quarantined records, oldest first, with their reasons",
    description="As `ledger quarantine list [JOB] [--run RUN] [--state S] "
    "[--limit N] --json`: the total, and the first `limit` records.",
    response_model=QuarantineDocument,
    responses=_RUN_ERRORS,
)
async def get_quarantine(
    request: Request,
    job: JobParam = None,
    run: RunQuery = None,
    state: StateParam = "pending",
    limit: LimitParam = 100,
) -> JsonResponse:
    only = None if state == "all" else state
    total, records = await _read(
        request, lambda db: read_quarantine(db, job or None, limit, run or None, only)
    )
    return JsonResponse(quarantine_document(total, records))


@router.get(
    "/runs/{run}/effects",
    summary="A run's side effects, one per idempotency key, and how each ended",
    description="As `ledger effects RUN [--state S] --json`: `counts` by state, "
    "with `calls` (calls the ledger started) and `repeated_after_crash`.",
    response_model=EffectListing,
    responses=_RUN_ERRORS,
)
async def get_effects(
    request: Request, run: RunParam, state: EffectStateParam = None
) -> JsonResponse:
    listing = await _read(request, lambda db: read_effects(db, run, state))
    return JsonResponse(listing.as_dict())


@router.get(
    "/effects/{effect}",
    summary="One effect: where, state, calls, error and decision",
    description="As `ledger effects show KEY --json`.",
    response_model=EffectRow,
    responses=_RUN_ERRORS,
)
async def get_effect(request: Request, effect: EffectParam) -> JsonResponse:
    row = await _read(request, lambda db: find_effect(db, effect))
    return JsonResponse(row.as_dict())
