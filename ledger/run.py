"""The run: one execution of a job against one input version.

A run is an aggregate whose events are the recovery story: attempts that
started, crashed, failed or completed; steps and batches that started; the
checkpoints that make work durable; and the records put in quarantine.

Every event a worker appends names its attempt. The aggregate refuses an
event from an attempt that is not the open one, and the store refuses a
save from a worker whose copy of the run is stale (its version was taken),
so a superseded worker can never move a run.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from ledger.checkpoint import Checkpoint, ResumePoint
from ledger.errors import LedgerError

__all__ = [
    "Checkpoint",
    "CheckpointRefused",
    "ResumePoint",
    "Run",
    "record_quarantine_id",
]


class CheckpointRefused(LedgerError):
    """A worker tried to record something its attempt may not record."""


def record_quarantine_id(run_id: UUID, step: str, record: int) -> str:
    """A file record's quarantine id. Deterministic: the same record
    quarantined again on a replayed batch keeps its id, so the read side
    holds it once."""
    return str(uuid5(run_id, f"{step}:{record}"))


class Run(Aggregate):
    """One run of a job; its id is the run id people quote."""

    class Started(Aggregate.Created):
        job: str
        job_version: str
        job_ref: str
        input: dict[str, Any]
        params: dict[str, Any]
        input_key: str
        steps: list[str]

    @classmethod
    def start(
        cls,
        *,
        run_id: UUID,
        job: str,
        job_version: str,
        job_ref: str,
        input: dict[str, Any],
        params: dict[str, Any],
        input_key: str,
        steps: list[str],
    ) -> Run:
        return cls._create(
            cls.Started,
            id=run_id,
            job=job,
            job_version=job_version,
            job_ref=job_ref,
            input=input,
            params=params,
            input_key=input_key,
            steps=steps,
        )

    def __init__(
        self,
        *,
        job: str,
        job_version: str,
        job_ref: str,
        input: dict[str, Any],
        params: dict[str, Any],
        input_key: str,
        steps: list[str],
    ) -> None:
        self.job = job
        self.job_version = job_version
        self.job_ref = job_ref
        self.input = input
        self.params = params
        self.input_key = input_key
        self.steps = steps

        # The state every later event evolves.
        self.attempt = 0
        self.attempt_open = False
        self.worker: dict[str, Any] = {}
        self.lease_until = ""
        self.status = "started"
        self.completed_steps: list[str] = []
        self.checkpoints: dict[str, Checkpoint] = {}
        self.batches_done: dict[str, int] = {}
        self.quarantined = 0
        self.quarantined_by_reason: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.batch_log: dict[str, list[dict[str, Any]]] = {}

        # Each quarantined record's state (see ledger.quarantine): pending,
        # discarded or promoted, and who decided it and why.
        self.quarantine_states: dict[str, str] = {}
        self.quarantine_decisions: dict[str, dict[str, str]] = {}

        # How many times each quarantined record was promoted, failed
        # promotions included: the next promotion's number is one more.
        self.quarantine_promotions: dict[str, int] = {}

        # Which event of the stream (its version) holds each quarantined
        # record's sealed payload (see ledger.sealing), read on promotion.
        self.sealed_payloads: dict[str, int] = {}

        # A consumer run's state (see ledger.messages): the next offset to
        # read of each partition it owns, the batch it is handling, and the
        # offsets of batches a crash interrupted.
        self.abandoned: dict[str, Any] | None = None

        # An operator's pause (see ledger.controls): who asked and why, and
        # the status the run goes back to when it is lifted.
        self.paused: dict[str, Any] | None = None
        self.pauses_lifted = 0
        self.status_before_pause = ""
        self.partitions: dict[str, int] = {}
        self.open_batch: dict[str, Any] | None = None
        self.crashed_ranges: list[dict[str, Any]] = []

    # Reading the state.

    @property
    def is_completed(self) -> bool:
        return self.status == "completed"

    def resume_point(self) -> ResumePoint | None:
        """Where the next attempt starts; None once every step is done."""
        for step in self.steps:
            if step in self.completed_steps:
                continue
            return ResumePoint(
                step=step,
                batch=self.batches_done.get(step, 0),
                after=self.checkpoints.get(step),
            )
        return None

    def require_open_attempt(self, attempt: int) -> None:
        if not self.attempt_open or attempt != self.attempt:
            raise CheckpointRefused(
                f"attempt {attempt} of run {self.id} is not the open attempt "
                f"(open: {self.attempt if self.attempt_open else 'none'})"
            )

    # Attempts.

    class AttemptStarted(Aggregate.Event):
        attempt: int
        worker: dict[str, Any]
        lease_until: str
        resume: dict[str, Any] | None

        def apply(self, run: Run) -> None:
            run.attempt = self.attempt
            run.attempt_open = True
            run.worker = self.worker
            run.lease_until = self.lease_until
            run.status = "running"
            run.open_batch = None

    def start_attempt(self, worker: dict[str, Any], lease_until: str) -> int:
        if self.attempt_open:
            raise CheckpointRefused(
                f"attempt {self.attempt} of run {self.id} is still open"
            )
        if self.is_completed:
            raise CheckpointRefused(f"run {self.id} is already completed")
        point = self.resume_point()
        self.trigger_event(
            self.AttemptStarted,
            attempt=self.attempt + 1,
            worker=worker,
            lease_until=lease_until,
            resume=point.as_dict() if point else None,
        )
        return self.attempt

    class AttemptCrashed(Aggregate.Event):
        attempt: int
        evidence: str
        detected_by: dict[str, Any]

        def apply(self, run: Run) -> None:
            run.attempt_open = False
            run.status = "crashed"

            # The messages a crash interrupted are suspects from now on.
            if run.open_batch is not None:
                for item in run.open_batch["ranges"]:
                    run.crashed_ranges.append(
                        {k: item[k] for k in ("partition", "first", "last")}
                    )
                run.open_batch = None

    def record_crash(self, evidence: str, detected_by: dict[str, Any]) -> None:
        """Closes an attempt whose worker died without recording an outcome."""
        self.require_open_attempt(self.attempt)
        self.trigger_event(
            self.AttemptCrashed,
            attempt=self.attempt,
            evidence=evidence,
            detected_by=detected_by,
        )

    # The lease: a worker that stops renewing it has lost the run.

    class LeaseRenewed(Aggregate.Event):
        """A heartbeat: the worker of `attempt` is alive until `lease_until`.

        Written only when no batch renewed the lease lately (a slow batch,
        a paused worker), so a busy worker adds no events of its own.
        """

        attempt: int
        lease_until: str

        def apply(self, run: Run) -> None:
            run.lease_until = self.lease_until

    def renew_lease(self, attempt: int, lease_until: str) -> None:
        self.require_open_attempt(attempt)
        self.trigger_event(self.LeaseRenewed, attempt=attempt, lease_until=lease_until)

    class WorkerPaused(Aggregate.Event):
        """The worker stopped at a batch boundary, as an operator asked, and
        waits, holding its lease, until the pause is lifted."""

        attempt: int
        resume: dict[str, Any] | None

        def apply(self, run: Run) -> None:
            run.status = "paused"

    def acknowledge_pause(self, attempt: int) -> None:
        self.require_open_attempt(attempt)
        point = self.resume_point()
        self.trigger_event(
            self.WorkerPaused,
            attempt=attempt,
            resume=point.as_dict() if point else None,
        )

    class AppendsRefused(Aggregate.Event):
        """A worker whose attempt had ended tried to record more.

        Its events were refused, never applied; this fact is what is left
        of them, so that history shows the late worker. The fencing token
        is the attempt number: only the open attempt may record work.
        """

        attempt: int
        refused: list[str]
        open_attempt: int | None
        why: str

    def refuse_appends(self, attempt: int, refused: list[str], why: str) -> None:
        self.trigger_event(
            self.AppendsRefused,
            attempt=attempt,
            refused=refused,
            open_attempt=self.attempt if self.attempt_open else None,
            why=why,
        )

    # Steps and batches.

    class StepStarted(Aggregate.Event):
        attempt: int
        step: str
        from_batch: int

    def start_step(self, attempt: int, step: str) -> None:
        self.require_open_attempt(attempt)
        self.trigger_event(
            self.StepStarted,
            attempt=attempt,
            step=step,
            from_batch=self.batches_done.get(step, 0),
        )

    class BatchStarted(Aggregate.Event):
        attempt: int
        step: str
        batch: int
        first_record: int
        lease_until: str

        def apply(self, run: Run) -> None:
            run.lease_until = self.lease_until

    def start_batch(
        self, attempt: int, step: str, batch: int, first_record: int, lease_until: str
    ) -> None:
        self.require_open_attempt(attempt)
        self._require_next_batch(step, batch)
        self.trigger_event(
            self.BatchStarted,
            attempt=attempt,
            step=step,
            batch=batch,
            first_record=first_record,
            lease_until=lease_until,
        )

    def _require_next_batch(self, step: str, batch: int) -> None:
        expected = self.batches_done.get(step, 0)
        if step in self.completed_steps or batch != expected:
            raise CheckpointRefused(
                f"step {step} of run {self.id} expects batch {expected}, "
                f"not batch {batch}: a checkpoint never moves backwards"
            )

    class RecordQuarantined(Aggregate.Event):
        """`payload` is a preview (redacted, cut); `sealed` the whole record,
        encrypted (see ledger.sealing), or None. Version 1 had no `sealed`."""

        class_version = 2

        attempt: int
        step: str
        batch: int
        record: int
        quarantine_id: str
        reason: str
        detail: str
        payload: Any
        sealed: dict[str, str] | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["sealed"] = None

        def apply(self, run: Run) -> None:
            if self.sealed is not None:
                run.sealed_payloads[self.quarantine_id] = self.originator_version

            # A replayed batch (a crash, a rerun) quarantines the record again
            # under the same id: it is counted once, and a decision already
            # taken about it stands.
            if self.quarantine_id in run.quarantine_states:
                return
            run.quarantine_states[self.quarantine_id] = "pending"
            run.quarantined += 1
            by_reason = run.quarantined_by_reason
            by_reason[self.reason] = by_reason.get(self.reason, 0) + 1

    def quarantine(
        self,
        attempt: int,
        step: str,
        batch: int,
        record: int,
        reason: str,
        detail: str,
        payload: Any,
        sealed: dict[str, str] | None = None,
    ) -> None:
        self.require_open_attempt(attempt)
        self.trigger_event(
            self.RecordQuarantined,
            attempt=attempt,
            step=step,
            batch=batch,
            record=record,
            quarantine_id=record_quarantine_id(self.id, step, record),
            reason=reason,
            detail=detail,
            payload=payload,
            sealed=sealed,
        )

    class BatchCheckpointed(Aggregate.Event):
        attempt: int
        step: str
        batch: int
        first_record: int
        last_record: int
        position: int
        position_kind: str
        records: int
        written: int
        quarantined: int
        counters: dict[str, int]
        lease_until: str

        def apply(self, run: Run) -> None:
            run.checkpoints[self.step] = Checkpoint(
                step=self.step,
                batch=self.batch,
                first_record=self.first_record,
                last_record=self.last_record,
                position=self.position,
            )
            run.batches_done[self.step] = self.batch + 1
            run.lease_until = self.lease_until

            # Every batch's own tallies, so that a rerun from a named point
            # can keep exactly the work before it (see ledger.rerun).
            run.batch_log.setdefault(self.step, []).append(
                {
                    "checkpoint": run.checkpoints[self.step],
                    "position_kind": self.position_kind,
                    "records": self.records,
                    "written": self.written,
                    "quarantined": self.quarantined,
                    "counters": dict(self.counters),
                }
            )

            # Running totals, for the summary and for explanations.
            tallies = {
                f"{self.step}.records": self.records,
                f"{self.step}.written": self.written,
                **self.counters,
            }
            for name, count in tallies.items():
                run.totals[name] = run.totals.get(name, 0) + count

    def checkpoint_batch(
        self,
        *,
        attempt: int,
        step: str,
        batch: int,
        first_record: int,
        last_record: int,
        position: int,
        position_kind: str,
        records: int,
        written: int,
        quarantined: int,
        counters: dict[str, int],
        lease_until: str,
    ) -> None:
        self.require_open_attempt(attempt)
        self._require_next_batch(step, batch)
        previous = self.checkpoints.get(step)
        if previous is not None and position <= previous.position:
            raise CheckpointRefused(
                f"step {step} of run {self.id}: position {position} does not "
                f"move past the last checkpoint's {previous.position}"
            )
        self.trigger_event(
            self.BatchCheckpointed,
            attempt=attempt,
            step=step,
            batch=batch,
            first_record=first_record,
            last_record=last_record,
            position=position,
            position_kind=position_kind,
            records=records,
            written=written,
            quarantined=quarantined,
            counters=counters,
            lease_until=lease_until,
        )

    class StepCompleted(Aggregate.Event):
        attempt: int
        step: str
        batches: int
        next_step: str | None

        def apply(self, run: Run) -> None:
            run.completed_steps.append(self.step)

    def complete_step(self, attempt: int, step: str) -> None:
        self.require_open_attempt(attempt)
        index = self.steps.index(step)
        next_step = self.steps[index + 1] if index + 1 < len(self.steps) else None
        self.trigger_event(
            self.StepCompleted,
            attempt=attempt,
            step=step,
            batches=self.batches_done.get(step, 0),
            next_step=next_step,
        )

    # Outcomes: each closes the attempt.

    class StepFailed(Aggregate.Event):
        attempt: int
        step: str
        batch: int | None
        error_class: str
        error_message: str

    class RunFailed(Aggregate.Event):
        attempt: int
        step: str | None
        batch: int | None
        error_class: str
        error_message: str

        def apply(self, run: Run) -> None:
            run.attempt_open = False
            run.status = "failed"

    def fail(
        self,
        attempt: int,
        step: str | None,
        batch: int | None,
        error_class: str,
        error_message: str,
    ) -> bool:
        """Records the attempt's failure; returns whether it did.

        A late or repeated report for an attempt that already ended (the
        same failure seen twice, a failure after a success or an
        abandonment) changes nothing: the attempt's first terminal event
        stands.
        """
        if attempt <= self.attempt and not (
            self.attempt_open and attempt == self.attempt
        ):
            return False
        self.require_open_attempt(attempt)
        if step is not None:
            self.trigger_event(
                self.StepFailed,
                attempt=attempt,
                step=step,
                batch=batch,
                error_class=error_class,
                error_message=error_message,
            )
        self.trigger_event(
            self.RunFailed,
            attempt=attempt,
            step=step,
            batch=batch,
            error_class=error_class,
            error_message=error_message,
        )
        return True

    class RunCompleted(Aggregate.Event):
        attempt: int
        totals: dict[str, int]

        def apply(self, run: Run) -> None:
            run.attempt_open = False
            run.status = "completed"

    def complete(self, attempt: int, totals: dict[str, int]) -> None:
        self.require_open_attempt(attempt)
        if self.resume_point() is not None:
            raise CheckpointRefused(f"run {self.id} still has steps to do")
        self.trigger_event(self.RunCompleted, attempt=attempt, totals=totals)
