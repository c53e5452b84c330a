"""The JSON documents of the read commands, shared by every adapter.

`ledger status --json`, `history --json`, `explain --json` and
`quarantine list --json` print these documents, and the HTTP API answers
with the same ones, so a script can move between the two without renaming
a field. Field names only ever get added, never renamed.
"""

from __future__ import annotations

from typing import Any

from projections.database import ReadDatabase
from projections.explain import explain
from projections.views import (
    AttemptView,
    QuarantineView,
    RunView,
    find_run,
    list_attempts,
    list_quarantine,
)

__all__ = [
    "explain_document",
    "history_document",
    "quarantine_document",
    "read_quarantine",
    "read_run_and_attempts",
    "status_document",
]


async def read_run_and_attempts(
    db: ReadDatabase, run_ref: str
) -> tuple[RunView, list[AttemptView]]:
    """The run with this id or unique prefix, and its attempts."""
    run = await find_run(db, run_ref)
    return run, await list_attempts(db, run.run_id, run.state)


async def read_quarantine(
    db: ReadDatabase,
    job: str | None,
    limit: int,
    run_ref: str | None,
    state: str | None = None,
) -> tuple[int, list[QuarantineView]]:
    """The quarantine's total and first records: of a job or of one run,
    in one state (`pending`, `discarded`, `promoted`) or in any (None)."""
    run_id = (await find_run(db, run_ref)).run_id if run_ref else None
    return await list_quarantine(db, job, limit, run_id, state)


def status_document(runs: list[RunView]) -> list[dict[str, Any]]:
    return [run.as_dict() for run in runs]


def history_document(run: RunView, attempts: list[AttemptView]) -> dict[str, Any]:
    return {"run": run.as_dict(), "attempts": [a.as_dict() for a in attempts]}


def explain_document(run: RunView, attempts: list[AttemptView]) -> dict[str, Any]:
    """The one sentence, with the structured fields it is built from."""
    return {
        "run_id": run.run_id,
        "state": run.state,
        "explanation": explain(run, attempts),
        "resume_point": run.resume_point,
        "last_checkpoint": run.last_checkpoint,
    }


def quarantine_document(total: int, records: list[QuarantineView]) -> dict[str, Any]:
    return {"total": total, "records": [r.as_dict() for r in records]}
