"""Operator controls applied to the store: one code path for CLI and API.

Each function finds the run (by id or unique prefix), applies one control
to the run as stored, and saves it. A worker appending at the same moment
takes the run's next version first; the control is then checked again on
the run as it stands, so a control never lands on a state it was not
checked against. A refused control appends nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from ledger.config import LedgerLocation
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.rerun import RerunPlan
    from ledger.run import Run
    from ledger.store import Ledger
    from projections.database import ReadDatabase
    from projections.quarantine import QuarantinedRecord

__all__ = [
    "BulkResult",
    "ControlResult",
    "RecordDecision",
    "RunKeptChanging",
    "abandon_run",
    "apply_control",
    "discard_record",
    "discard_records",
    "lift_pause_of",
    "pause_run",
    "plan_rerun_of",
    "rerun_run",
    "select_for_bulk",
    "select_pending_records",
    "show_record",
]

# How many times a control is re-checked against a run that a worker keeps
# moving; each try reloads the run.
_CONTROL_TRIES = 5


class RunKeptChanging(LedgerError):
    """A control lost every race against the run's own worker."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} kept changing under this control; run the same command again"
        )
        self.run_id = run_id


@dataclass(frozen=True)
class ControlResult:
    """What a control did, for the CLI's line and the API's answer."""

    run_id: str
    action: str
    by: str
    reason: str
    message: str

    # A live worker that goes on (or stops) by itself after the control.
    worker: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_control(
    location: LedgerLocation,
    run_ref: str,
    control: Callable[[Run], None],
    then: Callable[[Ledger, Run], object] | None = None,
) -> str:
    """Runs `control(run)` on the stored run and saves it, then `then` on
    the saved run; returns the id."""
    from ledger.store import IntegrityError, opened
    from projections.access import catch_up_quietly, read
    from projections.views import find_run

    view = read(location, lambda db: find_run(db, run_ref))
    with opened(location) as ledger:
        for _ in range(_CONTROL_TRIES):
            run: Run = ledger.repository.get(UUID(view.run_id))
            control(run)
            try:
                ledger.save(run)
            except IntegrityError:
                continue
            break
        else:
            raise RunKeptChanging(view.run_id)
        if then is not None:
            then(ledger, run)
    catch_up_quietly(location)
    return view.run_id


def abandon_run(
    location: LedgerLocation, run_ref: str, *, by: str, reason: str
) -> ControlResult:
    """Marks a run whose worker will never return; it may then be resumed."""
    from ledger.controls import abandon

    run_id = apply_control(location, run_ref, lambda run: abandon(run, by, reason))
    return ControlResult(
        run_id=run_id,
        action="abandon",
        by=by,
        reason=reason.strip(),
        message=(
            f"run {run_id} abandoned by {by}: {reason.strip()}; its worker's "
            f"later appends are refused; `ledger resume {run_id[:8]}` starts a "
            "new attempt from its resume point"
        ),
    )


def _live_holder(run: Run) -> str | None:
    """The evidence of a live worker holding the run's open attempt."""
    from ledger.worker import liveness

    if not run.attempt_open:
        return None
    state = liveness(run.worker, run.lease_until)
    return state.evidence if state.alive else None


def pause_run(
    location: LedgerLocation, run_ref: str, *, by: str, reason: str
) -> ControlResult:
    """Asks the run to pause; its worker stops at the next batch boundary."""
    from ledger.controls import pause

    holder: list[str | None] = [None]

    def control(run: Run) -> None:
        pause(run, by, reason)
        holder[0] = _live_holder(run)

    run_id = apply_control(location, run_ref, control)
    short = run_id[:8]
    if holder[0] is not None:
        message = (
            f"run {run_id}: pause asked by {by} ({reason.strip()}); its worker "
            f"({holder[0]}) stops at its next batch boundary and waits; "
            f"`ledger resume {short}` lets it go on"
        )
    else:
        message = (
            f"run {run_id} paused by {by} ({reason.strip()}); no worker may start "
            f"it until `ledger resume {short}` lifts the pause"
        )
    return ControlResult(run_id, "pause", by, reason.strip(), message, holder[0])


def lift_pause_of(
    location: LedgerLocation, run_ref: str, *, by: str, reason: str
) -> ControlResult:
    """Lifts a pause. `worker` in the result names a live worker that goes
    on by itself; without one, the caller starts the next attempt."""
    from ledger.controls import lift_pause

    holder: list[str | None] = [None]

    def control(run: Run) -> None:
        lift_pause(run, by, reason)
        holder[0] = _live_holder(run)

    run_id = apply_control(location, run_ref, control)
    if holder[0] is not None:
        message = (
            f"run {run_id} resumed by {by}: its worker ({holder[0]}) goes on "
            "from its resume point"
        )
    else:
        message = f"pause of run {run_id} lifted by {by}; no worker was waiting"
    return ControlResult(run_id, "resume", by, reason.strip(), message, holder[0])


@dataclass(frozen=True)
class RecordDecision(ControlResult):
    """A decision about one quarantined record, and which record it was."""

    quarantine_id: str = ""


@dataclass(frozen=True)
class BulkResult:
    """What a decision about many quarantined records did, or would do.

    `matched` pending records matched the filter when they were selected
    (`quarantine_ids`, counted by quarantine reason in `by_reason`);
    `decided` names those the decision was recorded for, and `skipped`
    those refused since, each with its quarantine id, run id and why.
    """

    action: str
    by: str
    reason: str
    dry_run: bool
    matched: int
    by_reason: dict[str, int]
    quarantine_ids: list[str]
    decided: list[str]
    skipped: list[dict[str, str]]
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def show_record(location: LedgerLocation, quarantine_ref: str) -> QuarantinedRecord:
    """One quarantined record as the read side holds it, with its decision."""
    from projections.access import read
    from projections.quarantine import find_quarantined

    return read(location, lambda db: find_quarantined(db, quarantine_ref))


def discard_record(
    location: LedgerLocation, quarantine_ref: str, *, by: str, reason: str
) -> RecordDecision:
    """Discards one pending record (an id or a unique prefix of 4 or more),
    then destroys the key of its sealed payload."""
    from ledger.controls import ControlRefused
    from ledger.quarantine import discard
    from ledger.sealed_payloads import destroy_discarded_keys

    found = show_record(location, quarantine_ref)
    shredded: list[str] = []
    try:
        run_id = apply_control(
            location,
            found.run_id,
            lambda run: discard(run, found.quarantine_id, by, reason),
            lambda ledger, run: shredded.extend(
                destroy_discarded_keys(ledger, run, [found.quarantine_id])
            ),
        )
    except ControlRefused as refusal:
        # Discarded already: a discard that crashed before destroying the
        # key leaves it, and discarding again finishes that.
        if _finish_discard(location, found):
            raise ControlRefused(
                f"{refusal}; the key of its sealed payload, left by an "
                "interrupted discard, is destroyed now"
            ) from refusal
        raise
    shred = "; the key of its sealed payload is destroyed" if shredded else ""
    return RecordDecision(
        run_id=run_id,
        action="discard",
        by=by,
        reason=reason.strip(),
        message=(
            f"record {found.quarantine_id[:8]} of run {run_id[:8]} "
            f"({_where(found)}, {found.reason}) discarded by {by}: "
            f"{reason.strip()}; it stays in the log and no longer waits in "
            f"quarantine{shred}"
        ),
        quarantine_id=found.quarantine_id,
    )


def _finish_discard(location: LedgerLocation, found: QuarantinedRecord) -> bool:
    from ledger.sealed_payloads import destroy_discarded_keys
    from ledger.store import opened

    with opened(location) as ledger:
        run: Run = ledger.repository.get(UUID(found.run_id))
        return bool(destroy_discarded_keys(ledger, run, [found.quarantine_id]))


def _where(record: QuarantinedRecord) -> str:
    if record.topic is not None:
        return f"{record.topic}[{record.partition}]@{record.offset}"
    return f"step {record.step}, record {record.record:,}"


def discard_records(
    location: LedgerLocation,
    *,
    by: str,
    reason: str,
    job: str | None = None,
    run_ref: str | None = None,
    quarantine_reason: str | None = None,
    since: str | None = None,
    until: str | None = None,
    dry_run: bool = False,
    quarantine_ids: Collection[str] | None = None,
) -> BulkResult:
    """Discards every pending record that matches the filter, one save per
    run; a dry run only selects them.

    `since` and `until` bound when records were quarantined (ISO 8601, or
    an age such as `2h`). `quarantine_ids` narrows the selection to records
    already shown to someone, so that a confirmed count is the count acted
    on: records quarantined after it was shown are left pending.
    """
    from ledger.controls import ControlRefused
    from projections.access import catch_up_quietly

    if not dry_run and not reason.strip():
        raise ControlRefused(
            "a reason is required: pass --reason TEXT saying why the records "
            "will never be processed"
        )
    # The selection, from the read side, caught up first.
    matched, result = select_for_bulk(
        location, BulkResult, "discard", by=by, reason=reason.strip(),
        dry_run=dry_run, job=job, run_ref=run_ref,
        quarantine_reason=quarantine_reason, since=since, until=until,
        quarantine_ids=quarantine_ids,
    )  # fmt: skip
    if dry_run or not matched:
        return result

    # The decisions, one save per run, each checked on the run as stored.
    decided, skipped = _discard_per_run(location, matched, by, reason)
    catch_up_quietly(location)
    message = (
        f"{len(decided):,} of the {len(matched):,} matching records discarded "
        f"by {by}: {reason.strip()}"
    )
    if skipped:
        message += f"; {len(skipped):,} left pending, for one: {skipped[0]['why']}"
    return replace(result, decided=decided, skipped=skipped, message=message)


def _discard_per_run(
    location: LedgerLocation, records: list[QuarantinedRecord], by: str, reason: str
) -> tuple[list[str], list[dict[str, str]]]:
    from ledger.controls import ControlRefused
    from ledger.quarantine import discard
    from ledger.sealed_payloads import destroy_discarded_keys
    from ledger.store import IntegrityError, opened

    by_run: dict[str, list[str]] = {}
    for record in records:
        by_run.setdefault(record.run_id, []).append(record.quarantine_id)

    decided: list[str] = []
    skipped: list[dict[str, str]] = []
    with opened(location) as ledger:
        for run_id, ids in by_run.items():
            # A run that a worker moves on is reloaded and checked again.
            for _ in range(_CONTROL_TRIES):
                run: Run = ledger.repository.get(UUID(run_id))
                done: list[str] = []
                refused: list[dict[str, str]] = []
                for quarantine_id in ids:
                    try:
                        discard(run, quarantine_id, by, reason)
                    except ControlRefused as refusal:
                        refused.append(
                            {
                                "quarantine_id": quarantine_id,
                                "run_id": run_id,
                                "why": str(refusal),
                            }
                        )
                        continue
                    done.append(quarantine_id)
                if not done:
                    destroy_discarded_keys(ledger, run, ids)
                    break
                try:
                    ledger.save(run)
                except IntegrityError:
                    continue

                # Recorded: now their keys go (and those of records an
                # interrupted discard left).
                destroy_discarded_keys(ledger, run, ids)
                break
            else:
                why = str(RunKeptChanging(run_id))
                done = []
                refused = [
                    {"quarantine_id": q, "run_id": run_id, "why": why} for q in ids
                ]
            decided += done
            skipped += refused
    return decided, skipped


def plan_rerun_of(location: LedgerLocation, run_ref: str, point: str) -> RerunPlan:
    """What a rerun from `point` would keep and redo; appends nothing."""
    from ledger.rerun import parse_point, plan_rerun
    from ledger.store import opened
    from projections.access import read
    from projections.views import find_run

    step, batch = parse_point(point)
    view = read(location, lambda db: find_run(db, run_ref))
    with opened(location) as ledger:
        run: Run = ledger.repository.get(UUID(view.run_id))
    return plan_rerun(run, step, batch)


def rerun_run(
    location: LedgerLocation,
    run_ref: str,
    *,
    by: str,
    reason: str,
    point: str,
    expected: RerunPlan | None = None,
) -> ControlResult:
    """Records a rerun from `point`: the work before it is kept, the rest
    is redone by the next attempt. With `expected` (the plan a person was
    shown), the run must still give that very plan."""
    from ledger.controls import ControlRefused
    from ledger.rerun import parse_point, plan_rerun, rewind

    step, batch = parse_point(point)
    planned: list[RerunPlan] = []

    def control(run: Run) -> None:
        plan = plan_rerun(run, step, batch)
        if expected is not None and plan != expected:
            raise ControlRefused(
                f"run {run.id} changed since its rerun plan was shown; run the "
                "same command again to see the new plan"
            )
        rewind(run, plan, by, reason)
        planned[:] = [plan]

    run_id = apply_control(location, run_ref, control)
    message = (
        f"run {run_id} rewound by {by} to {planned[0].point}: {reason.strip()}; "
        f"`ledger resume {run_id[:8]}` starts the attempt that redoes the work "
        "from there"
    )
    return ControlResult(run_id, "rerun", by, reason.strip(), message)


_Bulk = TypeVar("_Bulk", bound=BulkResult)


def select_for_bulk(
    location: LedgerLocation,
    kind: type[_Bulk],
    action: str,
    *,
    by: str,
    reason: str,
    dry_run: bool,
    job: str | None,
    run_ref: str | None,
    quarantine_reason: str | None,
    since: str | None,
    until: str | None,
    quarantine_ids: Collection[str] | None,
) -> tuple[list[QuarantinedRecord], _Bulk]:
    """The pending records a bulk decision acts on, and its result as long
    as it has acted on none (a dry run, or nothing matched).

    `quarantine_ids` narrows the selection to records already shown to
    someone, so that a confirmed count is the count acted on.
    """
    matched = select_pending_records(
        location, job, run_ref, quarantine_reason, since, until
    )
    if quarantine_ids is not None:
        wanted = set(quarantine_ids)
        matched = [record for record in matched if record.quarantine_id in wanted]
    by_reason = dict(sorted(Counter(record.reason for record in matched).items()))
    counted = ", ".join(f"{n:,} {name}" for name, n in by_reason.items())
    selection = f"{len(matched):,} pending records match" + (
        f" ({counted})" if counted else ""
    )
    done = action + ("d" if action.endswith("e") else "ed")
    return matched, kind(
        action=action,
        by=by,
        reason=reason,
        dry_run=dry_run,
        matched=len(matched),
        by_reason=by_reason,
        quarantine_ids=[record.quarantine_id for record in matched],
        decided=[],
        skipped=[],
        message=f"{selection}; nothing {done}"
        + (" (dry run)" if dry_run and matched else ""),
    )


def select_pending_records(
    location: LedgerLocation,
    job: str | None,
    run_ref: str | None,
    quarantine_reason: str | None,
    since: str | None,
    until: str | None,
) -> list[QuarantinedRecord]:
    """The pending records that match a bulk decision's filter, from the
    read side, caught up first."""
    from ledger.times import parse_moment
    from projections.access import read
    from projections.quarantine import select_pending
    from projections.views import find_run

    after = parse_moment(since, label="since") if since else None
    before = parse_moment(until, label="until") if until else None

    async def query(db: ReadDatabase) -> list[QuarantinedRecord]:
        run_id = (await find_run(db, run_ref)).run_id if run_ref else None
        return await select_pending(
            db,
            job=job,
            run_id=run_id,
            reason=quarantine_reason,
            since=after,
            until=before,
        )

    return read(location, query)
