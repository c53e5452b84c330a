"""Where a run report's facts come from: the read tables, then the log.

The read tables find the run (by id or unique prefix) and its effects,
and count the effects that did nothing worth telling; the log gives the
run's own stream, read once, and the streams of the effects worth
telling. The two steps are apart so that the HTTP API can take the first
on its event loop and the second in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast
from uuid import UUID

from ledger.config import LedgerLocation
from ledger.report import NoEventsToReport, RunReport, build_report

if TYPE_CHECKING:
    from eventsourcing.domain import Aggregate

    from projections.database import ReadDatabase

__all__ = ["ReportSubject", "load_report", "read_report_subject", "report_run"]


@dataclass(frozen=True)
class ReportSubject:
    """What the read tables say a report needs: the run's id, the keys of
    its effects worth telling, and the counts of all its effects."""

    run_id: str
    effect_keys: list[str] = field(default_factory=list)
    effect_counts: dict[str, int] = field(default_factory=dict)


async def read_report_subject(db: ReadDatabase, run_ref: str) -> ReportSubject:
    """The run named by an id or unique prefix, and its effects: those with
    a failure, a repeat, an operator's decision or no outcome yet are told
    event by event; clean ones (one call, completed) only counted."""
    from ledger.policy import read_policy
    from projections.effects import count_effects
    from projections.views import find_run

    # The ledger's redaction policy, read on this connection, is in force
    # for what the report shows (see `ledger.report_text.render`).
    await read_policy(db)
    view = await find_run(db, run_ref)
    rows = await db.fetch(
        "SELECT effect_key FROM proj_effects "
        "WHERE (run_id = $1 OR last_run_id = $1) AND (state <> 'completed' "
        "OR calls > 1 OR decided_by IS NOT NULL OR error IS NOT NULL) "
        "ORDER BY intended_at, effect_key",
        view.run_id,
    )
    return ReportSubject(
        view.run_id,
        [str(row["effect_key"]) for row in rows],
        await count_effects(db, view.run_id),
    )


def load_report(location: LedgerLocation, subject: ReportSubject) -> RunReport:
    """Reads the run's stream once, and its told effects' streams."""
    from ledger.store import opened

    with opened(location) as ledger:
        store = ledger.repository.event_store
        events = list(store.get(UUID(subject.run_id)))
        if not events:
            raise NoEventsToReport(subject.run_id)
        effects = {key: list(store.get(UUID(key))) for key in subject.effect_keys}
    return build_report(
        cast("list[Aggregate.Event]", events),
        cast("dict[str, list[Aggregate.Event]]", effects),
        subject.effect_counts,
    )


def report_run(location: LedgerLocation, run_ref: str) -> RunReport:
    """The report of the run with this id or unique prefix."""
    from projections.access import read

    subject = read(location, lambda db: read_report_subject(db, run_ref))
    return load_report(location, subject)
