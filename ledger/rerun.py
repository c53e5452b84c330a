"""Rerun from a named point: keep the work before it, redo the rest.

A point names where the redo starts:

- `step:NAME`: that whole step and every step after it;
- `batch:N`: batch N of the step the run is in (of its last step once
  every step is done), and every step after it;
- `step:NAME/batch:N`: batch N of that step, and every step after it.

Batches are numbered as `history` and `explain` show them, from 0. Work
before the point is kept: its checkpoints and tallies stand and it is not
read again. The decision is a `RunRewound` event in the run's stream, with
who and why; the new attempt that follows starts at the point.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from eventsourcing.domain import Aggregate

from ledger.controls import ControlRefused, lift_pause
from ledger.worker import current_worker, liveness

if TYPE_CHECKING:
    from ledger.run import Run

__all__ = [
    "PointUnreadable",
    "RerunPlan",
    "RunRewound",
    "StepPlan",
    "parse_point",
    "plan_rerun",
    "require_at_rest",
    "rewind",
]

_POINT = re.compile(r"^(?:step:(?P<step>[^/]+))?(?:/?batch:(?P<batch>-?[0-9]{1,18}))?$")

# Longer than any step name and batch number a job can have.
_POINT_LIMIT = 300

_POINT_HELP = "name it as step:NAME, batch:N or step:NAME/batch:N"


class PointUnreadable(ControlRefused):
    """A `--from` value that names no point at all (bad input, not a state
    the run is in)."""


def parse_point(text: str) -> tuple[str | None, int | None]:
    """The step and batch a `--from` value names; either may be None."""
    if len(text) > _POINT_LIMIT:
        raise PointUnreadable(
            f"the point is {len(text):,} characters long: {_POINT_HELP}"
        )
    match = _POINT.match(text.strip())
    if not text.strip() or match is None or not any(match.groupdict().values()):
        raise PointUnreadable(f"cannot read the point {text!r}: {_POINT_HELP}")
    batch = match["batch"]
    return match["step"], int(batch) if batch is not None else None


@dataclass(frozen=True)
class StepPlan:
    """What a rerun does to one step: batches kept and batches redone."""

    step: str
    kept: int
    redone: int
    kept_records: int
    kept_written: int


@dataclass(frozen=True)
class RerunPlan:
    run_id: str
    step: str
    batch: int
    steps: list[StepPlan]

    @property
    def point(self) -> str:
        return f"step {self.step}, batch {self.batch}"

    def lines(self) -> list[str]:
        """The plan as a person reads it: what is kept, what is redone."""
        kept, redone = [], []
        for ordinal, item in enumerate(self.steps):
            if item.kept:
                kept.append(
                    f"{item.step}: {_batches(0, item.kept)} "
                    f"({item.kept_records:,} records)"
                )
            if ordinal == self._index:
                again = f", {_count(item.redone)} of them checkpointed before"
                redone.append(
                    f"{item.step}: from batch {item.kept}{again if item.redone else ''}"
                )
            elif ordinal > self._index:
                redone.append(f"{item.step}: from the start")
        return [
            f"rerun of run {self.run_id} from {self.point}",
            "keep: " + ("; ".join(kept) if kept else "nothing"),
            "redo: " + "; ".join(redone),
        ]

    @property
    def _index(self) -> int:
        return [item.step for item in self.steps].index(self.step)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "from": {"step": self.step, "batch": self.batch},
            "steps": [asdict(item) for item in self.steps],
        }


def _batches(first: int, count: int) -> str:
    last = first + count - 1
    return f"batch {first}" if count == 1 else f"batches {first}-{last}"


def _count(batches: int) -> str:
    return f"{batches} batch" if batches == 1 else f"{batches} batches"


def require_at_rest(run: Run) -> str | None:
    """Refuses a rerun of a run a live worker holds (paused or not).
    Returns the evidence when the open attempt's worker is gone."""
    short = str(run.id)[:8]
    if not run.attempt_open:
        return None
    state = liveness(run.worker, run.lease_until)
    if not state.alive:
        return state.evidence
    if run.paused is not None:
        raise ControlRefused(
            f"run {run.id} is paused, and its worker ({state.evidence}) waits on "
            f"it; stop that worker, or `ledger abandon {short} --reason TEXT`, "
            "then rerun it"
        )
    raise ControlRefused(
        f"run {run.id} is running attempt {run.attempt} ({state.evidence}); wait "
        f"for it to end (`ledger pause {short} --reason TEXT` stops it at its next "
        "batch boundary, then stop that worker), before rerunning it"
    )


def plan_rerun(run: Run, step: str | None, batch: int | None) -> RerunPlan:
    """What rerunning from the point would keep and redo; refused when the
    point does not exist in the run, or the run is not at rest."""
    if run.partitions or run.input.get("kind") == "kafka":
        raise ControlRefused(
            f"run {run.id} is a Kafka consumer's run: its positions never move "
            "back, since they fence other consumers; reprocess messages by "
            "consuming them with a new group_id, or promote quarantined ones"
        )

    require_at_rest(run)

    # The step: named, or the one the run is in, or its last.
    if step is None:
        point = run.resume_point()
        step = point.step if point is not None else run.steps[-1]
    if step not in run.steps:
        raise ControlRefused(
            f"run {run.id} has no step {step!r}; its steps are {', '.join(run.steps)}"
        )

    # The batch: one that was checkpointed, or the next to do.
    done = run.batches_done.get(step, 0)
    batch = 0 if batch is None else batch
    if not 0 <= batch <= done:
        last = f"batches 0-{done - 1} are checkpointed" if done else "no batch is"
        raise ControlRefused(
            f"step {step} of run {run.id} has no batch {batch}: {last}, and a "
            f"rerun may start at batch {done} at the latest"
        )

    index = run.steps.index(step)
    plans = []
    for ordinal, name in enumerate(run.steps):
        log = run.batch_log.get(name, [])
        keep = len(log) if ordinal < index else batch if ordinal == index else 0
        plans.append(
            StepPlan(
                step=name,
                kept=keep,
                redone=len(log) - keep,
                kept_records=sum(entry["records"] for entry in log[:keep]),
                kept_written=sum(entry["written"] for entry in log[:keep]),
            )
        )
    return RerunPlan(str(run.id), step, batch, plans)


class RunRewound(Aggregate.Event):
    """An operator reran the run from a named point.

    Checkpoints from the point on are set aside (they stay in the log,
    with the attempts that made them); the work before it is kept. `kept`
    holds, per step from the point on, what stands; `counters` the job's
    counters over every kept batch; `checkpoint` the last kept checkpoint.
    The next attempt starts at the point.
    """

    by: str
    reason: str
    step: str
    batch: int
    kept: list[dict[str, Any]]
    counters: dict[str, int]
    checkpoint: dict[str, Any] | None
    batches_done: int

    def apply(self, run: Run) -> None:
        index = run.steps.index(self.step)
        for ordinal, name in enumerate(run.steps):
            if ordinal < index:
                continue
            keep = self.batch if ordinal == index else 0
            run.batch_log[name] = run.batch_log.get(name, [])[:keep]
            run.batches_done[name] = keep
            if keep:
                run.checkpoints[name] = run.batch_log[name][-1]["checkpoint"]
            else:
                run.checkpoints.pop(name, None)
        run.completed_steps = run.steps[:index]

        # The running totals, from the kept batches alone.
        run.totals = {}
        for name, log in run.batch_log.items():
            for entry in log:
                tallies = {
                    f"{name}.records": entry["records"],
                    f"{name}.written": entry["written"],
                    **entry["counters"],
                }
                for key, count in tallies.items():
                    run.totals[key] = run.totals.get(key, 0) + count
        run.status = "rewound"


def rewind(run: Run, plan: RerunPlan, by: str, reason: str) -> None:
    """Records the rerun decision; refused while a live worker holds the run.

    An attempt left open by a dead worker is closed as crashed first, with
    the evidence, as the next `ledger run` would; a pause is lifted.
    """
    if not reason.strip():
        raise ControlRefused(
            "a rerun needs a reason: pass --reason TEXT saying why the work is redone"
        )
    gone = require_at_rest(run)
    if gone is not None:
        run.record_crash(gone, detected_by=current_worker())

    # A pause holds the run until lifted; the rerun is that decision.
    if run.paused is not None:
        lift_pause(run, by, f"rerun from {plan.point}")

    # The kept state, as the read side needs it after the rewind.
    index = run.steps.index(plan.step)
    kept = []
    counters: dict[str, int] = {}
    last: dict[str, Any] | None = None
    for ordinal, name in enumerate(run.steps):
        log = run.batch_log.get(name, [])[: plan.steps[ordinal].kept]
        for entry in log:
            for key, count in entry["counters"].items():
                counters[key] = counters.get(key, 0) + count
        if log:
            checkpoint = log[-1]["checkpoint"]
            last = {
                "step": name,
                "batch": checkpoint.batch,
                "first_record": checkpoint.first_record,
                "last_record": checkpoint.last_record,
                "position": checkpoint.position,
                "position_kind": log[-1]["position_kind"],
            }
        if ordinal >= index:
            kept.append(
                {
                    "step": name,
                    "batches": len(log),
                    "records": sum(entry["records"] for entry in log),
                    "written": sum(entry["written"] for entry in log),
                    "quarantined": sum(entry["quarantined"] for entry in log),
                    "last_first": log[-1]["checkpoint"].first_record if log else None,
                    "last_last": log[-1]["checkpoint"].last_record if log else None,
                    "last_position": log[-1]["checkpoint"].position if log else None,
                }
            )
    run.trigger_event(
        RunRewound,
        by=by,
        reason=reason.strip()[:500],
        step=plan.step,
        batch=plan.batch,
        kept=kept,
        counters=counters,
        checkpoint=last,
        batches_done=sum(item.kept for item in plan.steps),
    )
