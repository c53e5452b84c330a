"""The quarantine on the read side: decisions applied, records found.

`proj_quarantine` holds one row per quarantined record or message, with
its state (`pending` until an operator decides, then `discarded` or
`promoted`) and the decision: who, why and when. Each decision is also a
row of `proj_actions`, so that `ledger history` lists it with the run's
other human decisions. A promotion the job's code rejected again adds a
pending row of its own, whose `previous_id` names the record it was
promoted from (and whose `next_id` names it back); a failed promotion
leaves the record pending and is listed in `proj_actions` only.

The queries find a record by id or unique prefix, and select the pending
records a bulk decision applies to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from ledger.errors import UnknownRecord
from projections.database import ReadDatabase
from projections.ids import id_prefix
from projections.statements import Statement, decision_of, json_text

__all__ = [
    "QUARANTINE_HANDLERS",
    "QUARANTINE_TOPIC_PREFIX",
    "QuarantinedRecord",
    "find_quarantined",
    "select_pending",
]

QUARANTINE_TOPIC_PREFIX = "ledger.quarantine:"

# How a consumer's quarantined message names its source in `detail`, for
# rows projected before the source had columns of its own.
_SOURCE_IN_DETAIL = re.compile(r"^(?P<topic>[^\s\[]+)\[(?P<partition>\d+)\]@(\d+) ")


def _decided(
    state: str, action: str
) -> Callable[[str, dict[str, Any]], list[Statement]]:
    def handler(run_id: str, e: dict[str, Any]) -> list[Statement]:
        return [
            (
                "UPDATE proj_quarantine SET state = $2, decided_by = $3, "
                "decided_reason = $4, decided_at = $5 WHERE quarantine_id = $1",
                (e["quarantine_id"], state, e["by"], e["reason"], e["timestamp"]),
            ),
            (
                "INSERT INTO proj_actions (run_id, at, action, by_whom, reason, "
                "attempt, target) VALUES ($1, $2, $3, $4, $5, NULL, $6)",
                (
                    run_id,
                    e["timestamp"],
                    action,
                    e["by"],
                    e["reason"],
                    e["quarantine_id"],
                ),
            ),
        ]

    return handler


def _promoted(run_id: str, e: dict[str, Any]) -> list[Statement]:
    # The words the command printed; loaded here, not at start, so that
    # read commands do not load the write side's events.
    from ledger.quarantine import FAILED, outcome_words

    words = outcome_words(
        e["outcome"], e["step"], e["error_class"], e["detail"], e["requarantined_as"]
    )
    statements: list[Statement] = [
        (
            "INSERT INTO proj_actions (run_id, at, action, by_whom, reason, "
            "attempt, target) VALUES ($1, $2, 'promote', $3, $4, NULL, $5)",
            (
                run_id,
                e["timestamp"],
                e["by"],
                f"{e['reason']}; promotion {e['promotion']}: {words}",
                e["quarantine_id"],
            ),
        )
    ]

    # A failed promotion decided nothing: the record still waits.
    if e["outcome"] != FAILED:
        statements.append(
            (
                "UPDATE proj_quarantine SET state = 'promoted', decided_by = $2, "
                "decided_reason = $3, decided_at = $4, next_id = $5 "
                "WHERE quarantine_id = $1",
                (
                    e["quarantine_id"],
                    e["by"],
                    e["reason"],
                    e["timestamp"],
                    e["requarantined_as"],
                ),
            )
        )
    return statements


def _requarantined(run_id: str, e: dict[str, Any]) -> list[Statement]:
    # The new record belongs to the attempt that first read it; a message
    # names its source as a consumer's quarantined message does.
    detail = e["detail"]
    if e["topic"] is not None:
        detail = f"{e['topic']}[{e['partition']}]@{e['offset']} Reject: {detail}"
    return [
        (
            "INSERT INTO proj_quarantine (quarantine_id, run_id, step, batch, "
            "record, reason, detail, attempt, payload, quarantined_at, state, "
            "src_topic, src_partition, src_offset, previous_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE((SELECT attempt FROM "
            "proj_quarantine WHERE quarantine_id = $8), 1), $9, $10, 'pending', "
            "$11, $12, $13, $8) ON CONFLICT (quarantine_id) DO NOTHING",
            (
                e["quarantine_id"], run_id, e["step"], e["batch"], e["record"],
                e["reason"], detail[:1000], e["previous_id"], json_text(e["payload"]),
                e["timestamp"], e["topic"], e["partition"], e["offset"],
            ),
        )
    ]  # fmt: skip


QUARANTINE_HANDLERS: dict[str, Callable[[str, dict[str, Any]], list[Statement]]] = {
    "RecordDiscarded": _decided("discarded", "discard"),
    "RecordPromoted": _promoted,
    "RecordRequarantined": _requarantined,
}


@dataclass(frozen=True)
class QuarantinedRecord:
    """Everything the read side knows of one quarantined record.

    A file job's record names its step and record number; a consumer's
    message (step `consume`) its topic, partition and offset as well.
    `decision` is None while the record is pending, else by, reason, at.

    Lineage: `previous_id` names the record this one was promoted from
    (quarantined again by that promotion), `next_id` the record a
    promotion of this one was quarantined again as. `promotions` lists
    its promotions, failed ones included (at, by, and the reason with the
    outcome in words); only `find_quarantined` fills it.
    """

    quarantine_id: str
    run_id: str
    job: str
    kind: str
    step: str
    batch: int
    record: int
    topic: str | None
    partition: int | None
    offset: int | None
    reason: str
    detail: str
    attempt: int
    payload: Any
    state: str
    quarantined_at: str
    decision: dict[str, Any] | None
    previous_id: str | None = None
    next_id: str | None = None
    promotions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(row: dict[str, Any]) -> QuarantinedRecord:
    topic, partition, offset = row["src_topic"], row["src_partition"], None
    is_message = row["job_kind"] == "kafka"
    if is_message:
        offset = row["src_offset"] if row["src_offset"] is not None else row["record"]
        if topic is None:
            found = _SOURCE_IN_DETAIL.match(row["detail"])
            if found is not None:
                topic, partition = found["topic"], int(found["partition"])
    decision = decision_of(row)
    return QuarantinedRecord(
        quarantine_id=row["quarantine_id"],
        run_id=row["run_id"],
        job=row["job"],
        kind="message" if is_message else "record",
        step=row["step"],
        batch=row["batch"],
        record=row["record"],
        topic=topic,
        partition=partition,
        offset=offset,
        reason=row["reason"],
        detail=row["detail"],
        attempt=row["attempt"],
        payload=orjson.loads(row["payload"]) if row["payload"] else None,
        state=row["state"],
        quarantined_at=row["quarantined_at"],
        decision=decision,
        previous_id=row.get("previous_id"),
        next_id=row.get("next_id"),
    )


_SELECT = (
    "SELECT q.*, r.job, CASE WHEN s.run_id IS NULL THEN 'file' ELSE 'kafka' END "
    "AS job_kind FROM proj_quarantine q JOIN proj_runs r ON r.run_id = q.run_id "
    "LEFT JOIN proj_streams s ON s.run_id = q.run_id"
)


async def find_quarantined(db: ReadDatabase, quarantine_ref: str) -> QuarantinedRecord:
    """The record with this id, or the one record whose id starts with it."""
    # An id or prefix typed without its dashes is still that id.
    try:
        ref = id_prefix(quarantine_ref)
    except ValueError as problem:
        raise UnknownRecord(quarantine_ref, f"a quarantine id {problem}") from None
    rows = await db.fetch(
        f"{_SELECT} WHERE q.quarantine_id LIKE $1 ORDER BY q.quarantine_id LIMIT 6",
        ref + "%",
    )
    if not rows:
        raise UnknownRecord(quarantine_ref)
    if len(rows) > 1:
        shown = ", ".join(r["quarantine_id"][:13] for r in rows[:5])
        raise UnknownRecord(
            quarantine_ref, f"it matches several records ({shown}); give more"
        )
    record = _record(rows[0])
    promotions = await db.fetch(
        "SELECT at, by_whom, reason FROM proj_actions "
        "WHERE target = $1 AND action = 'promote' ORDER BY at",
        record.quarantine_id,
    )
    return replace(
        record,
        promotions=[
            {"at": p["at"], "by": p["by_whom"], "reason": p["reason"]}
            for p in promotions
        ],
    )


async def select_pending(
    db: ReadDatabase,
    *,
    job: str | None = None,
    run_id: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[QuarantinedRecord]:
    """Pending records that match every filter given, oldest first.

    Times are compared as moments, not as text: stored timestamps carry
    microseconds only when they are not zero.
    """
    conditions = ["q.state = 'pending'"]
    args: tuple[Any, ...] = ()
    for column, value in (("r.job", job), ("q.run_id", run_id), ("q.reason", reason)):
        if value is not None:
            args += (value,)
            conditions.append(f"{column} = ${len(args)}")
    rows = await db.fetch(
        f"{_SELECT} WHERE {' AND '.join(conditions)} "
        "ORDER BY q.quarantined_at, q.record",
        *args,
    )
    records = [_record(row) for row in rows]
    return [
        record
        for record in records
        if (since is None or datetime.fromisoformat(record.quarantined_at) >= since)
        and (until is None or datetime.fromisoformat(record.quarantined_at) <= until)
    ]
