"""A job's runs as they stood at a past moment: `ledger status JOB --as-of`.

The read tables hold the present only; the past is in the log. A run is
what its events up to the moment make of it, folded through the same
`Run` aggregate a worker uses, so its state, last good checkpoint and
resume point "as of" a time are what a `ledger status` then would have
shown from the recorded facts. (Whether a worker was alive then is not
recorded, so a run whose worker had died shows as it was recorded:
running.)

Folding every run of a busy job is slow, so most runs are not folded.
The answer names the latest runs that had started by the moment; of
those, a run whose last stored event is at or before the moment, and is
already applied to the read tables, was then exactly what the read tables
hold now, and is read from them. Only the runs with events after the
moment (the one live then, a run decided on later) are folded, and only
up to the moment. Runs the read tables cannot stand in for (a consumer's,
whose positions they keep per partition; a rerun one, whose kept
checkpoint they keep without its time) are always folded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.config import LedgerLocation
from ledger.replay import Replay, state_of
from ledger.times import BadTime, parse_moment

if TYPE_CHECKING:
    from ledger.store import Ledger
    from projections.database import ReadDatabase
    from projections.settled import LastEvent

__all__ = [
    "AsOfPlan",
    "RunAsOf",
    "finish_status_as_of",
    "parse_as_of",
    "plan_status_as_of",
    "run_as_of",
    "status_as_of",
]

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


def parse_as_of(text: str) -> datetime:
    """The moment an `--as-of` value names; BadTime for one that is not a
    time, or lies beyond what a date can hold (an age of 10**12 days)."""
    try:
        return parse_moment(text, label="--as-of")
    except (OverflowError, ValueError):
        raise BadTime("--as-of", text) from None


def run_as_of(ledger: Ledger, run_id: UUID, moment: datetime) -> RunAsOf | None:
    """The run folded from its events recorded at or before `moment`;
    None when it had not started yet."""
    replay = Replay()
    for stored in ledger.repository.event_store.get(run_id):
        event = cast(Aggregate.Event, stored)
        if event.timestamp > moment:
            break
        replay.apply(event)
    run = replay.run
    if run is None:
        return None
    return RunAsOf(
        run_id=str(run.id),
        job=run.job,
        as_of=moment.isoformat(),
        state=state_of(run),
        attempts=run.attempt,
        last_checkpoint=replay.last_checkpoint,
        resume_point=replay.resume_point(),
        quarantined=sum(
            1 for state in run.quarantine_states.values() if state == "pending"
        ),
        partitions=dict(run.partitions),
        events=replay.events,
        last_event_at=replay.last_at,
    )


@dataclass(frozen=True)
class AsOfPlan:
    """The runs the answer names, newest first: those read from the read
    tables (`settled`) and those still to fold (`to_fold`)."""

    moment: datetime
    run_ids: list[str]
    settled: dict[str, RunAsOf] = field(default_factory=dict)

    @property
    def to_fold(self) -> list[str]:
        return [run_id for run_id in self.run_ids if run_id not in self.settled]


async def plan_status_as_of(
    db: ReadDatabase, job: str, moment: datetime, *, fold_all: bool = False
) -> AsOfPlan:
    """Which runs had started by `moment`, and which of them the read
    tables stand in for; `fold_all` leaves every run to be folded."""
    from ledger.policy import read_policy
    from projections.runner import position
    from projections.settled import folded_anyway, last_event, settled_runs

    # The ledger's redaction policy is in force for what the answer shows.
    await read_policy(db)

    # The position first: a run whose last event is at or before it has
    # every event applied in the tables read after it.
    applied = await position(db)
    run_ids = await _started_by(db, job, moment)
    if fold_all or not run_ids:
        return AsOfPlan(moment, run_ids)

    # Settled by then: nothing stored after the moment, all of it applied.
    apart = await folded_anyway(db, run_ids)
    settled: dict[str, LastEvent] = {}
    for run_id in run_ids:
        if run_id in apart:
            continue
        last = await last_event(db, run_id)
        if last is not None and last[0] <= applied and last[2] <= moment:
            settled[run_id] = last
    found = await settled_runs(db, settled)
    as_of = moment.isoformat()
    return AsOfPlan(
        moment,
        run_ids,
        {run_id: RunAsOf(as_of=as_of, **fields) for run_id, fields in found.items()},
    )


def finish_status_as_of(location: LedgerLocation, plan: AsOfPlan) -> list[RunAsOf]:
    """The plan's answer: its settled runs, and the others folded now (the
    ledger is opened only when some are left to fold)."""
    from ledger.store import opened

    found = dict(plan.settled)
    if plan.to_fold:
        with opened(location) as ledger:
            for run_id in plan.to_fold:
                run = run_as_of(ledger, UUID(run_id), plan.moment)
                if run is not None:
                    found[run_id] = run
    return [found[run_id] for run_id in plan.run_ids if run_id in found]


def status_as_of(
    location: LedgerLocation, job: str, moment: datetime, *, fold_all: bool = False
) -> list[RunAsOf]:
    """The job's runs that had started by `moment`, newest first, each as
    it stood then (the latest RUNS_SHOWN of them)."""
    from projections.access import read

    plan = read(
        location, lambda db: plan_status_as_of(db, job, moment, fold_all=fold_all)
    )
    return finish_status_as_of(location, plan)


async def _started_by(db: ReadDatabase, job: str, moment: datetime) -> list[str]:
    """The latest RUNS_SHOWN runs of the job started at or before `moment`.

    Times are compared as moments, not as text: stored times carry
    microseconds only when they are not zero. The query asks for a second
    more, which text order cannot misplace, and the rest is checked here.
    """
    bound = (moment + timedelta(seconds=1)).isoformat()
    limit = RUNS_SHOWN * 2
    while True:
        rows = await db.fetch(
            "SELECT run_id, started_at FROM proj_runs WHERE job = $1 "
            f"AND started_at <= $2 ORDER BY started_at DESC LIMIT {limit}",
            job,
            bound,
        )
        started = [
            row["run_id"]
            for row in rows
            if datetime.fromisoformat(row["started_at"]) <= moment
        ]
        if len(started) >= RUNS_SHOWN or len(rows) < limit:
            return started[:RUNS_SHOWN]
        limit *= 4
