"""One attempt's work: the remaining steps, batch by batch.

The order inside a batch is the whole recovery guarantee:

1. `BatchStarted` is recorded (and the lease renewed);
2. every record is handled; rejected ones wait in memory;
3. the step writes the batch's output, replay-safe;
4. one ledger transaction records the quarantined records and the
   batch's checkpoint together.

A crash before 4 commits leaves the batch unrecorded, so the next attempt
reads and writes it again (step 3 makes that harmless). A crash after 4
leaves it recorded, so no later attempt reads it again.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import orjson
import structlog
from eventsourcing.persistence import IntegrityError, PersistenceError

from ledger import faults
from ledger.controls import PausedAtBoundary
from ledger.effects import EffectRegistry
from ledger.errors import JobFailed, LedgerUnavailable, OutputLost, Superseded
from ledger.job import Record, Reject, Step
from ledger.run import Run, record_quarantine_id
from ledger.sealed_payloads import seal_batch
from ledger.store import Ledger
from ledger.worker import describe, lease_until

__all__ = [
    "Attempt",
    "NoProgress",
    "ProgressSink",
    "TooManyRejected",
    "commit",
    "ended_by",
    "preview_payload",
    "record_refusal",
    "save_run",
    "verify_output",
]

log = structlog.get_logger(__name__)

# Payload previews kept in quarantine events are capped, so that a huge
# record cannot bloat the ledger.
PAYLOAD_PREVIEW_CHARS = 2000

# A save refused because the run moved on is applied again on the run as
# stored; each try follows one more operator decision or lease renewal.
_COMMIT_TRIES = 10

# How often a paused worker looks for the pause to be lifted.
PAUSE_POLL_SECONDS = float(os.environ.get("LEDGER_PAUSE_POLL_SECONDS", "0.5"))


class ProgressSink(Protocol):
    def step_started(self, step: str, total: int | None, done: int) -> None: ...

    def batch_done(self, step: str, position: int) -> None: ...

    def step_finished(self, step: str) -> None: ...

    def paused(self, by: str, reason: str) -> None: ...


class NoProgress:
    def step_started(self, step: str, total: int | None, done: int) -> None:
        pass

    def batch_done(self, step: str, position: int) -> None:
        pass

    def step_finished(self, step: str) -> None:
        pass

    def paused(self, by: str, reason: str) -> None:
        pass


def verify_output(run: Run, steps: Sequence[Step]) -> None:
    """Checks the output still holds what the run's checkpoints record."""
    for step in steps:
        verify = getattr(step, "verify", None)
        written = run.totals.get(f"{step.name}.written", 0)
        if verify is not None and written:
            verify(written)


def save_run(ledger: Ledger, run: Run, attempt: int, *others: Any) -> None:
    """Saves the run; a refused version means another worker took over."""
    try:
        ledger.save(run, *others)
    except IntegrityError as error:
        try:
            stored: Run = ledger.repository.get(run.id)
        except PersistenceError:
            raise Superseded(str(run.id), attempt) from error
        raise Superseded(str(run.id), attempt, ended_by(stored)) from error
    except PersistenceError as error:
        raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error


def commit(
    ledger: Ledger, run: Run, attempt: int, record: Callable[[Run], object]
) -> Run:
    """Applies `record` to the run and saves it; returns the run as saved.

    The store refuses a save when the run moved on since it was loaded.
    While this attempt is still the run's open one, what moved it can only
    be an operator's decision or a lease renewal, never work, so `record`
    is applied again to the run as stored (and checked again). Once the
    attempt has ended (abandoned, taken over after its lease ran out), the
    refusal is recorded and `Superseded` raised: nothing of it is applied.
    """
    for _ in range(_COMMIT_TRIES):
        record(run)
        refused = [type(event).__name__ for event in run.pending_events]
        try:
            ledger.save(run)
            return run
        except IntegrityError as error:
            stored = _reload(ledger, run)
            if stored.attempt_open and stored.attempt == attempt:
                run = stored
                continue
            record_refusal(ledger, stored, attempt, refused)
            raise Superseded(str(run.id), attempt, ended_by(stored)) from error
        except PersistenceError as error:
            raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error
    raise Superseded(str(run.id), attempt, "changed faster than it could record")


def _reload(ledger: Ledger, run: Run) -> Run:
    try:
        stored: Run = ledger.repository.get(run.id)
    except PersistenceError as error:
        raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error
    return stored


def _refreshed(ledger: Ledger, run: Run) -> Run:
    try:
        fresh: Run = ledger.refreshed(run)
    except PersistenceError as error:
        raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error
    return fresh


def record_refusal(ledger: Ledger, run: Run, attempt: int, refused: list[str]) -> None:
    """Records that a late worker's appends were refused, best effort: the
    refusal stands whether or not this record makes it."""
    why = ended_by(run) or (
        f"attempt {run.attempt} holds the run"
        if run.attempt_open
        else f"the run is {run.status}"
    )
    try:
        run.refuse_appends(attempt, refused, why)
        ledger.save(run)
    except (IntegrityError, PersistenceError):
        return
    log.warning(
        "attempt.superseded",
        run_id=str(run.id),
        attempt=attempt,
        refused=refused,
        why=why,
    )


def ended_by(run: Run) -> str | None:
    """Who ended a worker's attempt, when an operator did."""
    if run.status == "abandoned" and run.abandoned:
        return f"abandoned by {run.abandoned['by']}: {run.abandoned['reason']}"
    if run.attempt_open:
        return f"taken over by attempt {run.attempt} ({describe(run.worker)})"
    return None


class Attempt:
    """One attempt's work through the remaining steps."""

    def __init__(
        self,
        ledger: Ledger,
        run: Run,
        attempt: int,
        steps: Sequence[Step],
        progress: ProgressSink,
        events: int,
        redact: Callable[[Any], Any],
        params: dict[str, Any],
        effects: EffectRegistry,
    ) -> None:
        self.effects = effects
        self.redact = redact
        self.params = params
        self.ledger = ledger
        self.run = run
        self.attempt = attempt
        self.steps = steps
        self.progress = progress
        self.events = events
        self.step: str | None = None
        self.batch: int | None = None

    def commit(self, record: Callable[[Run], object]) -> None:
        """Records facts on the run; see `commit`."""
        before = self.run.version
        self.run = commit(self.ledger, self.run, self.attempt, record)
        self.events += self.run.version - before

    def work(self) -> None:
        try:
            self._work_steps(self.steps)
        except (Superseded, LedgerUnavailable):
            # Nothing more may be recorded by this worker.
            raise
        except KeyboardInterrupt as interrupt:
            self._record_failure(
                "Interrupted", f"stopped by {str(interrupt) or 'SIGINT'}"
            )
            raise JobFailed(
                str(self.run.id), self._failure_text("interrupted")
            ) from None
        except Exception as error:
            self._record_failure(type(error).__name__, str(error))
            raise JobFailed(
                str(self.run.id),
                self._failure_text(f"{type(error).__name__}: {error}", error),
            ) from error

    def _failure_text(self, what: str, error: Exception | None = None) -> str:
        what = str(self.redact(what))
        where = f" in step {self.step}" if self.step else ""
        if self.batch is not None:
            where += f", batch {self.batch}"
        short = str(self.run.id)[:8]

        # The next move depends on what failed; say the one that works.
        if isinstance(error, TooManyRejected):
            then = (
                f"if those records really are bad, `ledger resume {short} "
                "--max-quarantine-ratio 1` quarantines them and goes on"
            )
        elif isinstance(error, OutputLost):
            then = "`ledger explain` names the command that starts over"
        else:
            then = (
                f"once fixed, `ledger resume {short}` goes on from the last checkpoint"
            )
        return f"run {self.run.id} failed{where}: {what}; {then}"

    def _record_failure(self, error_class: str, message: str) -> None:
        # Start again from what the store holds: the in-memory run may carry
        # a checkpoint that never committed.
        run = _reload(self.ledger, self.run)
        if not run.attempt_open or run.attempt != self.attempt:
            raise Superseded(str(run.id), self.attempt, ended_by(run))
        self.run = run
        # Redacted whole, then cut: half a secret matches no pattern.
        message = str(self.redact(message))[:2000]
        self.commit(
            lambda run: run.fail(
                self.attempt, self.step, self.batch, error_class, message
            )
        )
        log.warning(
            "attempt.failed",
            run_id=str(run.id),
            attempt=self.attempt,
            step=self.step,
            batch=self.batch,
            error_class=error_class,
        )

    def _work_steps(self, steps: Sequence[Step]) -> None:
        by_name = {step.name: step for step in steps}

        # Resuming onto an output that lost checkpointed work would skip it:
        # refuse, and record why, so `explain` names the way out.
        verify_output(self.run, steps)
        for name in self.run.steps:
            if name in self.run.completed_steps:
                continue
            self.step = name
            self.effects.at(name)
            self.commit(partial(Run.start_step, attempt=self.attempt, step=name))
            self._work_batches(by_name[name])
            self.batch = None
            self.commit(partial(Run.complete_step, attempt=self.attempt, step=name))
            self.progress.step_finished(name)

        # The output must still hold everything the checkpoints record: a
        # file deleted or replaced under the job is caught here, not later.
        self.step = None
        verify_output(self.run, steps)
        self.commit(lambda run: run.complete(self.attempt, dict(run.totals)))
        log.info("run.completed", run_id=str(self.run.id), attempt=self.attempt)

    def _work_batches(self, step: Step) -> None:
        batch_size = int(self.run.params["batch_size"])
        after = self.run.checkpoints.get(step.name)
        self.progress.step_started(
            step.name, step.size(), after.position if after else 0
        )
        records = step.read(after)
        while True:
            chunk = list(itertools.islice(records, batch_size))
            if not chunk:
                return
            self._work_batch(step, chunk)

    def _work_batch(self, step: Step, chunk: list[Record]) -> None:
        batch = self.run.batches_done.get(step.name, 0)
        self.batch = batch
        faults.enter_batch(step.name, batch)

        # Record the start, renewing the lease; an operator's pause is
        # honoured here, at the boundary, before the batch is begun.
        def begin(run: Run) -> None:
            if run.paused is not None:
                raise PausedAtBoundary
            run.start_batch(
                self.attempt, step.name, batch, chunk[0].number, lease_until()
            )

        while True:
            try:
                self.commit(begin)
                break
            except PausedAtBoundary:
                self._wait_while_paused()

        # Handle each record; a rejected one waits for quarantine. Effects'
        # outcomes are recorded before the checkpoint, or before the failure.
        counters: Counter[str] = Counter()
        outputs: list[tuple[Record, Any]] = []
        rejected: list[tuple[Record, Reject]] = []
        try:
            for record in chunk:
                try:
                    self.effects.begin_record()
                    outputs.append((record, step.handle(record, counters)))
                except Reject as rejection:
                    rejected.append((record, rejection))
            self._check_reject_ratio(step.name, batch, len(chunk), rejected)
            faults.hit("in_batch")

            # Write the output; replay-safe, so a crash from here on is harmless.
            self.effects.begin_record()
            written = step.write(outputs)
            faults.hit("after_write")
        except BaseException:
            self.effects.flush_quietly()
            raise
        self.effects.flush()

        # Each rejected record whole, sealed and its key stored before the
        # transaction that records it (see ledger.sealed_payloads).
        def quarantine_id(record: Record) -> str:
            return record_quarantine_id(self.run.id, step.name, record.number)

        seals = seal_batch(
            self.ledger, self.run, {quarantine_id(r): j.payload for r, j in rejected}
        )

        # One transaction: quarantined records and the checkpoint.
        def checkpoint(run: Run) -> None:
            for record, reject in rejected:
                run.quarantine(
                    self.attempt,
                    step.name,
                    batch,
                    record.number,
                    str(self.redact(reject.reason)),
                    str(self.redact(reject.detail))[:500],
                    preview_payload(self.redact(reject.payload)),
                    seals.get(run, quarantine_id(record)),
                )
            run.checkpoint_batch(
                attempt=self.attempt,
                step=step.name,
                batch=batch,
                first_record=chunk[0].number,
                last_record=chunk[-1].number,
                position=chunk[-1].position,
                position_kind=getattr(step, "position_kind", "position"),
                records=len(chunk),
                written=written,
                quarantined=len(rejected),
                counters=dict(counters),
                lease_until=lease_until(),
            )

        self.commit(checkpoint)
        seals.settle(self.run)
        self.batch = None
        faults.hit("after_checkpoint")
        self.progress.batch_done(step.name, chunk[-1].position)

    def _wait_while_paused(self) -> None:
        """Records that this worker paused, then waits, holding its lease
        (the heartbeat renews it), until the pause is lifted."""
        self.commit(lambda run: run.acknowledge_pause(self.attempt))
        lifted = self.run.pauses_lifted
        paused = self.run.paused or {}
        log.info(
            "attempt.paused",
            run_id=str(self.run.id),
            attempt=self.attempt,
            by=paused.get("by"),
            reason=paused.get("reason"),
        )
        self.progress.paused(paused.get("by", ""), paused.get("reason", ""))
        while True:
            time.sleep(PAUSE_POLL_SECONDS)
            run = _refreshed(self.ledger, self.run)
            if not run.attempt_open or run.attempt != self.attempt:
                raise Superseded(str(run.id), self.attempt, ended_by(run))
            self.run = run

            # Lifted, even if paused again since: this worker goes on, and
            # meets the new pause at its next boundary.
            if run.pauses_lifted > lifted:
                log.info("attempt.resumed", run_id=str(run.id), attempt=self.attempt)
                return

    def _check_reject_ratio(
        self, step: str, batch: int, size: int, rejected: list[tuple[Record, Reject]]
    ) -> None:
        # The current guard, not the recorded one: raising it after a review
        # is how an operator lets a run through.
        limit = float(self.params["max_quarantine_ratio"])
        batch_size = int(self.run.params["batch_size"])
        if size >= min(20, batch_size) and len(rejected) > limit * size:
            reasons = Counter(reject.reason for _, reject in rejected)
            named = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            raise TooManyRejected(
                f"batch rejected {len(rejected)} of {size} records ({named}), "
                f"over max_quarantine_ratio {limit}; check that the input is "
                "the file this job expects"
            )


class TooManyRejected(Exception):
    """A batch rejected so much that quarantining it would hide a fault."""


def preview_payload(payload: Any) -> Any:
    """A payload small enough to keep in an event."""
    if payload is None:
        return None
    if isinstance(payload, str):
        return payload[:PAYLOAD_PREVIEW_CHARS]
    encoded = orjson.dumps(payload, default=str)
    if len(encoded) <= PAYLOAD_PREVIEW_CHARS:
        return orjson.loads(encoded)
    return encoded[:PAYLOAD_PREVIEW_CHARS].decode("utf-8", "replace")
