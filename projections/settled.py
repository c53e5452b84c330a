"""Runs that have not changed since a moment, as the read tables hold them.

`ledger status JOB --as-of` folds a run's events only when it must (see
`ledger.as_of`): a run whose last stored event is at or before the moment,
and already applied to the read tables, stood then exactly as the tables
hold it now. These queries find that last event and read such runs, in
the fields and words of `ledger status --json`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from projections.database import PostgresDatabase, ReadDatabase, SQLiteDatabase

__all__ = ["LastEvent", "folded_anyway", "last_event", "settled_runs"]

# The last stored event of a run: its notification id, its version (how
# many events the run has: versions count from 1) and when it was recorded.
LastEvent = tuple[int, int, datetime]


def _placeholders(count: int, start: int = 1) -> str:
    return ", ".join(f"${n}" for n in range(start, start + count))


async def folded_anyway(db: ReadDatabase, run_ids: list[str]) -> set[str]:
    """Runs the read tables cannot stand in for, settled or not.

    A consumer's run: the tables keep every partition it ever owned, the
    run only those it owns. A rerun one: the tables keep its kept
    checkpoint with the time of the checkpoint it replaced.
    """
    marks = _placeholders(len(run_ids))
    rows = await db.fetch(
        f"SELECT run_id FROM proj_streams WHERE run_id IN ({marks}) "
        f"UNION SELECT run_id FROM proj_actions WHERE run_id IN ({marks}) "
        "AND action = 'rerun'",
        *run_ids,
    )
    return {str(row["run_id"]) for row in rows}


async def last_event(db: ReadDatabase, run_id: str) -> LastEvent | None:
    """The run's last stored event, read from the log itself (one row, by
    the store's own index on stream and version)."""
    if isinstance(db, SQLiteDatabase):
        # The library stores a stream id as bare hex on SQLite.
        sql = (
            f"SELECT rowid AS id, originator_version, state FROM {db.events_table} "
            "WHERE originator_id = $1 ORDER BY originator_version DESC LIMIT 1"
        )
        key: Any = UUID(run_id).hex
    else:
        assert isinstance(db, PostgresDatabase)
        sql = (
            "SELECT notification_id AS id, originator_version, state FROM "
            f"{db.events_table} WHERE originator_id = $1 "
            "ORDER BY originator_version DESC LIMIT 1"
        )
        key = UUID(run_id)
    rows = await db.fetch(sql, key)
    if not rows:
        return None
    row = rows[0]
    recorded = orjson.loads(bytes(row["state"]))["timestamp"]
    return int(row["id"]), int(row["originator_version"]), _moment(recorded)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def settled_runs(
    db: ReadDatabase, last: dict[str, LastEvent]
) -> dict[str, dict[str, Any]]:
    """Each run's fields of `ledger status --json --as-of` (all but
    `as_of`), from the read tables; `last` holds each run's last event."""
    run_ids = list(last)
    if not run_ids:
        return {}
    marks = _placeholders(len(run_ids))
    runs = await db.fetch(
        "SELECT run_id, job, state, attempts, cp_step, cp_batch, cp_first, "
        "cp_last, cp_position, cp_position_kind, cp_at FROM proj_runs "
        f"WHERE run_id IN ({marks})",
        *run_ids,
    )
    steps: dict[str, list[dict[str, Any]]] = {}
    for row in await db.fetch(
        "SELECT run_id, step, state, batches, last_last, last_position, "
        f"position_kind FROM proj_steps WHERE run_id IN ({marks}) "
        "ORDER BY run_id, ordinal",
        *run_ids,
    ):
        steps.setdefault(row["run_id"], []).append(row)
    pending = {
        row["run_id"]: int(row["n"])
        for row in await db.fetch(
            "SELECT run_id, COUNT(*) AS n FROM proj_quarantine "
            f"WHERE state = 'pending' AND run_id IN ({marks}) GROUP BY run_id",
            *run_ids,
        )
    }

    # An operator's pause in force: the last pause or lift decides.
    paused: dict[str, bool] = {}
    for row in await db.fetch(
        "SELECT run_id, action FROM proj_actions WHERE action IN "
        f"('pause', 'resume') AND run_id IN ({marks}) ORDER BY at",
        *run_ids,
    ):
        paused[row["run_id"]] = row["action"] == "pause"

    found: dict[str, dict[str, Any]] = {}
    for row in runs:
        run_id = str(row["run_id"])
        _, version, at = last[run_id]
        found[run_id] = {
            "run_id": run_id,
            "job": row["job"],
            "state": "paused" if paused.get(run_id) else row["state"],
            "attempts": int(row["attempts"]),
            "last_checkpoint": _checkpoint(row),
            "resume_point": _resume_point(steps.get(run_id, [])),
            "quarantined": pending.get(run_id, 0),
            "partitions": {},
            "events": version,
            "last_event_at": at.isoformat(),
        }
    return found


def _checkpoint(row: dict[str, Any]) -> dict[str, Any] | None:
    if row["cp_step"] is None:
        return None
    return {
        "step": row["cp_step"],
        "batch": row["cp_batch"],
        "first_record": row["cp_first"],
        "last_record": row["cp_last"],
        "position": row["cp_position"],
        "position_kind": row["cp_position_kind"],
        "at": row["cp_at"],
    }


def _resume_point(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first work after the last good checkpoint: None when all done."""
    for step in steps:
        if step["state"] == "completed":
            continue
        last = step["last_last"]
        return {
            "step": step["step"],
            "batch": step["batches"],
            "from_record": 1 if last is None else last + 1,
            "position": step["last_position"] or 0,
            "position_kind": step["position_kind"],
        }
    return None
