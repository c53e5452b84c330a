"""A job's runs as they stood at a past moment: `ledger status JOB --as-of`.

The read tables hold the present only; the past is in the log. Each run
is rebuilt from its own events up to the moment, through the same `Run`
aggregate a worker uses, so a run's state, last good checkpoint and resume
point "as of" a time are exactly what a `ledger status` run then would
have shown from the recorded facts. (Whether a worker was alive then is
not recorded, so a run whose worker had died shows as it was recorded:
running.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.config import LedgerLocation

if TYPE_CHECKING:
    from ledger.store import Ledger
    from projections.database import ReadDatabase

__all__ = ["RunAsOf", "run_as_of", "status_as_of"]

# As many runs as `ledger status JOB` shows.
RUNS_SHOWN = 50


@dataclass(frozen=True)
class RunAsOf:
    """One run at a past moment; dicts shaped as `ledger status --json`'s."""

    run_id: str
    job: str
    as_of: str
    state: str
    attempts: int
    last_checkpoint: dict[str, Any] | None
    resume_point: dict[str, Any] | None
    quarantined: int
    partitions: dict[str, int]
    events: int
    last_event_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_as_of(ledger: Ledger, run_id: UUID, moment: datetime) -> RunAsOf | None:
    """The run rebuilt from its events recorded at or before `moment`;
    None when it had not started yet."""
    from ledger.run import Run

    run: Run | None = None
    events = 0
    last_at = ""
    checkpoint: dict[str, Any] | None = None
    kinds: dict[str, str] = {}
    for stored in ledger.repository.event_store.get(run_id):
        event = cast(Aggregate.Event, stored)
        if event.timestamp > moment:
            break
        run = event.mutate(run)
        events += 1
        last_at = event.timestamp.isoformat()

        # The last good checkpoint is the latest recorded, of any step.
        if isinstance(event, Run.BatchCheckpointed):
            kinds[event.step] = event.position_kind
            checkpoint = {
                "step": event.step,
                "batch": event.batch,
                "first_record": event.first_record,
                "last_record": event.last_record,
                "position": event.position,
                "position_kind": event.position_kind,
                "at": last_at,
            }
    if run is None:
        return None
    return RunAsOf(
        run_id=str(run.id),
        job=run.job,
        as_of=moment.isoformat(),
        state="paused" if run.paused is not None else run.status,
        attempts=run.attempt,
        last_checkpoint=checkpoint,
        resume_point=_resume_point(run, kinds),
        quarantined=sum(
            1 for state in run.quarantine_states.values() if state == "pending"
        ),
        partitions=dict(run.partitions),
        events=events,
        last_event_at=last_at,
    )


def _resume_point(run: Any, kinds: dict[str, str]) -> dict[str, Any] | None:
    point = run.resume_point()
    if point is None:
        return None
    after = point.after
    return {
        "step": point.step,
        "batch": point.batch,
        "from_record": after.last_record + 1 if after else 1,
        "position": after.position if after else 0,
        "position_kind": kinds.get(point.step),
    }


def status_as_of(location: LedgerLocation, job: str, moment: datetime) -> list[RunAsOf]:
    """The job's runs that had started by `moment`, newest first, each as
    it stood then (the latest RUNS_SHOWN of them)."""
    from ledger.store import opened
    from projections.access import read

    async def started(db: ReadDatabase) -> list[str]:
        rows = await db.fetch(
            "SELECT run_id, started_at FROM proj_runs WHERE job = $1 "
            "ORDER BY started_at DESC",
            job,
        )
        # Compared as moments, not as text: stored times carry microseconds
        # only when they are not zero.
        return [
            row["run_id"]
            for row in rows
            if datetime.fromisoformat(row["started_at"]) <= moment
        ][:RUNS_SHOWN]

    run_ids = read(location, started)
    with opened(location) as ledger:
        found = (run_as_of(ledger, UUID(run_id), moment) for run_id in run_ids)
        return [run for run in found if run is not None]
