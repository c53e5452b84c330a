"""Running a job: claim the run, resume it, checkpoint each batch.

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

import hashlib
import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from uuid import UUID, uuid4

import orjson
import structlog
from eventsourcing.persistence import IntegrityError, PersistenceError

from ledger import faults
from ledger.errors import (
    InputError,
    JobFailed,
    LedgerUnavailable,
    RunHeld,
    Superseded,
)
from ledger.job import InputVersion, Job, Record, Reject, RunContext, Step
from ledger.run import InputRuns, ResumePoint, Run, input_runs_id
from ledger.store import AggregateNotFoundError, Ledger
from ledger.worker import current_worker, lease_until, liveness

__all__ = [
    "RUNTIME_PARAMETERS",
    "ProgressSink",
    "RunSummary",
    "describe_input",
    "resolve_params",
    "run_job",
]

log = structlog.get_logger(__name__)

# Parameters every job has, next to its own.
RUNTIME_PARAMETERS: dict[str, Any] = {
    "batch_size": 5000,
    # A batch that rejects more than this share of its records fails its
    # step instead of quarantining them: that many rejects means the wrong
    # file or a broken rule, not bad records.
    "max_quarantine_ratio": 0.2,
}

# Payload previews kept in quarantine events are capped, so that a huge
# record cannot bloat the ledger.
PAYLOAD_PREVIEW_CHARS = 2000


class ProgressSink(Protocol):
    def step_started(self, step: str, total: int | None, done: int) -> None: ...

    def batch_done(self, step: str, position: int) -> None: ...

    def step_finished(self, step: str) -> None: ...


class _NoProgress:
    def step_started(self, step: str, total: int | None, done: int) -> None:
        pass

    def batch_done(self, step: str, position: int) -> None:
        pass

    def step_finished(self, step: str) -> None:
        pass


@dataclass
class RunSummary:
    """What one `ledger run` did, for the closing summary."""

    run_id: UUID
    job: str
    status: str
    attempt: int
    resumed_from: ResumePoint | None
    already_completed: bool = False
    totals: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    events_written: int = 0
    elapsed: float = 0.0


def resolve_params(job: Job, overrides: dict[str, str]) -> dict[str, Any]:
    """The run's parameters: defaults, with `--param` values converted."""
    params = {**RUNTIME_PARAMETERS, **job.parameters}
    for name, text in overrides.items():
        if name not in params:
            known = ", ".join(sorted(params))
            raise InputError(
                f"--param {name}", "unknown parameter", f"use one of: {known}"
            )
        params[name] = _convert(name, text, params[name])
    if int(params["batch_size"]) < 1:
        raise InputError("--batch-size", "must be at least 1", "pass a positive size")
    if not 0 <= float(params["max_quarantine_ratio"]) <= 1:
        raise InputError(
            "--param max_quarantine_ratio",
            "must be between 0 and 1",
            "pass a share such as 0.2",
        )
    return params


def _convert(name: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise InputError(
            f"--param {name}={text}",
            f"not a valid {type(default).__name__}",
            f"pass a {type(default).__name__} like {default!r}",
        ) from None
    return text


def describe_input(path: Path) -> InputVersion:
    """Names an input by size and content digest, reading it once."""
    if not path.exists():
        raise InputError(str(path), "no such file", "check the --input path")
    if not path.is_file():
        raise InputError(str(path), "not a regular file", "pass a file, not a folder")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return InputVersion(
        name=path.name,
        path=str(path.resolve()),
        size=path.stat().st_size,
        sha256=digest.hexdigest(),
    )


def input_key(job: Job, source: InputVersion, params: dict[str, Any]) -> str:
    """The input version's identity: job, code version, content, parameters."""
    canonical = orjson.dumps(
        {
            "job": job.name,
            "version": job.version,
            "sha256": source.sha256,
            "params": params,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


def run_job(
    ledger: Ledger,
    job: Job,
    job_ref: str,
    source: InputVersion,
    params: dict[str, Any],
    *,
    new_run: bool = False,
    progress: ProgressSink | None = None,
) -> RunSummary:
    """Runs (or resumes) the job on the input; returns what happened."""
    progress = progress or _NoProgress()
    started = time.monotonic()
    key = input_key(job, source, params)

    # Find the run for this input version; a completed one is not redone.
    run, index = _find_run(ledger, job, key, new_run=new_run)
    if run is not None and run.is_completed:
        return _summary(run, started, already_completed=True)

    # Open the job's output, then start or claim the run, then work.
    context = RunContext(run_id=run.id if run else uuid4(), input=source, params=params)
    steps = job.open(context)
    try:
        _check_steps(job, steps, run)
    except InputError:
        job.close(context, completed=False)
        raise
    completed = False
    previous = _on_sigterm(_raise_interrupt)
    try:
        if run is None:
            run = Run.start(
                run_id=context.run_id,
                job=job.name,
                job_version=job.version,
                job_ref=job_ref,
                input=source.as_dict(),
                params=params,
                input_key=key,
                steps=[step.name for step in steps],
            )
            index = index or InputRuns.create(job.name, key)
            index.add_run(run.id)
        attempt, resumed_from, events = _claim(ledger, run, index)
        worker = _Worker(ledger, run, attempt, steps, progress, events, job.redact)
        worker.work()
        completed = True
    finally:
        _on_sigterm(previous)
        job.close(context, completed=completed)

    summary = _summary(worker.run, started)
    summary.attempt = attempt
    summary.resumed_from = resumed_from
    summary.events_written = worker.events
    return summary


def _check_steps(job: Job, steps: Sequence[Step], run: Run | None) -> None:
    """Step names are unique, and a resumed run's steps are still there."""
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise InputError(
            job.name, f"step names repeat ({', '.join(names)})",
            "give every step of the job its own name",
        )  # fmt: skip
    if run is not None and run.steps != names:
        raise InputError(
            job.name,
            f"run {run.id} was made with steps {run.steps}, the job now has {names}",
            f"bump {job.name}'s version when its steps change, or restore them",
        )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _on_sigterm(handler: Any) -> Any:
    """Installs a SIGTERM handler; only the main thread may, so an embedded
    worker in another thread leaves signals to its host."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _find_run(
    ledger: Ledger, job: Job, key: str, *, new_run: bool
) -> tuple[Run | None, InputRuns | None]:
    try:
        index: InputRuns = ledger.repository.get(input_runs_id(key))
    except AggregateNotFoundError:
        return None, None
    latest: Run = ledger.repository.get(UUID(index.run_ids[-1]))
    if latest.is_completed and new_run:
        return None, index
    return latest, index


def _claim(
    ledger: Ledger, run: Run, index: InputRuns | None
) -> tuple[int, ResumePoint | None, int]:
    """Opens a new attempt; closes a dead worker's attempt first."""
    me = current_worker()

    # A previous attempt that never recorded its outcome: is its worker
    # still there?
    if run.attempt_open:
        state = liveness(run.worker, run.lease_until)
        if state.alive:
            raise RunHeld(str(run.id), state.evidence)
        run.record_crash(state.evidence, detected_by=me)
        log.warning(
            "attempt.crashed",
            run_id=str(run.id),
            attempt=run.attempt,
            evidence=state.evidence,
        )

    resumed_from = run.resume_point() if run.attempt else None
    attempt = run.start_attempt(me, lease_until())
    events = len(run.pending_events) + (len(index.pending_events) if index else 0)
    _save(ledger, run, attempt, index)
    log.info(
        "attempt.started",
        run_id=str(run.id),
        job=run.job,
        attempt=attempt,
        resume=resumed_from.as_dict() if resumed_from else None,
    )
    return attempt, resumed_from, events


def _save(ledger: Ledger, run: Run, attempt: int, *others: Any) -> None:
    """Saves the run; a refused version means another worker took over."""
    try:
        ledger.save(run, *others)
    except IntegrityError as error:
        raise Superseded(str(run.id), attempt) from error
    except PersistenceError as error:
        raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error


class _Worker:
    """One attempt's work through the remaining steps."""

    def __init__(
        self,
        ledger: Ledger,
        run: Run,
        attempt: int,
        steps: Sequence[Step],
        progress: ProgressSink,
        events: int,
        redact: Any,
    ) -> None:
        self.redact = redact
        self.ledger = ledger
        self.run = run
        self.attempt = attempt
        self.steps = steps
        self.progress = progress
        self.events = events
        self.step: str | None = None
        self.batch: int | None = None

    def save(self) -> None:
        self.events += len(self.run.pending_events)
        _save(self.ledger, self.run, self.attempt)

    def work(self) -> None:
        try:
            self._work_steps(self.steps)
        except (Superseded, LedgerUnavailable):
            # Nothing more may be recorded by this worker.
            raise
        except KeyboardInterrupt as interrupt:
            self._record_failure("Interrupted", f"stopped by {interrupt or 'SIGINT'}")
            raise JobFailed(
                str(self.run.id), self._failure_text("interrupted")
            ) from None
        except Exception as error:
            self._record_failure(type(error).__name__, str(error))
            raise JobFailed(
                str(self.run.id),
                self._failure_text(f"{type(error).__name__}: {error}"),
            ) from error

    def _failure_text(self, what: str) -> str:
        where = f" in step {self.step}" if self.step else ""
        if self.batch is not None:
            where += f", batch {self.batch}"
        return (
            f"run {self.run.id} failed{where}: {what}; once fixed, "
            f"`ledger resume {str(self.run.id)[:8]}` goes on from the last checkpoint"
        )

    def _record_failure(self, error_class: str, message: str) -> None:
        # Start again from what the store holds: the in-memory run may carry
        # a checkpoint that never committed.
        try:
            run: Run = self.ledger.repository.get(self.run.id)
        except PersistenceError as error:
            raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error
        if not run.attempt_open or run.attempt != self.attempt:
            raise Superseded(str(run.id), self.attempt)
        run.fail(self.attempt, self.step, self.batch, error_class, message[:2000])
        self.run = run
        self.save()
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
        for name in self.run.steps:
            if name in self.run.completed_steps:
                continue
            self.step = name
            self.run.start_step(self.attempt, name)
            self.save()
            self._work_batches(by_name[name])
            self.batch = None
            self.run.complete_step(self.attempt, name)
            self.save()
            self.progress.step_finished(name)

        self.step = None
        self.run.complete(self.attempt, dict(self.run.totals))
        self.save()
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

        # Record the start, renewing the lease.
        self.run.start_batch(
            self.attempt, step.name, batch, chunk[0].number, lease_until()
        )
        self.save()

        # Handle each record; a rejected one waits for quarantine.
        counters: Counter[str] = Counter()
        outputs: list[tuple[Record, Any]] = []
        rejected: list[tuple[Record, Reject]] = []
        for record in chunk:
            try:
                outputs.append((record, step.handle(record, counters)))
            except Reject as rejection:
                rejected.append((record, rejection))
        self._check_reject_ratio(step.name, batch, len(chunk), rejected)
        faults.hit("in_batch")

        # Write the output; replay-safe, so a crash from here on is harmless.
        written = step.write(outputs)
        faults.hit("after_write")

        # One transaction: quarantined records and the checkpoint.
        for record, reject in rejected:
            self.run.quarantine(
                self.attempt,
                step.name,
                batch,
                record.number,
                reject.reason,
                reject.detail[:500],
                _preview(reject.payload),
            )
        self.run.checkpoint_batch(
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
        self.save()
        faults.hit("after_checkpoint")
        self.progress.batch_done(step.name, chunk[-1].position)

    def _check_reject_ratio(
        self, step: str, batch: int, size: int, rejected: list[tuple[Record, Reject]]
    ) -> None:
        limit = float(self.run.params["max_quarantine_ratio"])
        if size >= 20 and len(rejected) > limit * size:
            reasons = Counter(reject.reason for _, reject in rejected)
            raise TooManyRejected(
                f"step {step} batch {batch} rejected {len(rejected)} of {size} "
                f"records ({dict(reasons)}), over max_quarantine_ratio={limit}: "
                "check that --input is the file this job expects, or raise "
                "--param max_quarantine_ratio"
            )


class TooManyRejected(Exception):
    """A batch rejected so much that quarantining it would hide a fault."""


def _preview(payload: Any) -> Any:
    """A payload small enough to keep in an event."""
    if payload is None:
        return None
    if isinstance(payload, str):
        return payload[:PAYLOAD_PREVIEW_CHARS]
    encoded = orjson.dumps(payload, default=str)
    if len(encoded) <= PAYLOAD_PREVIEW_CHARS:
        return orjson.loads(encoded)
    return encoded[:PAYLOAD_PREVIEW_CHARS].decode("utf-8", "replace")


def _summary(
    run: Run, started: float, *, already_completed: bool = False
) -> RunSummary:
    return RunSummary(
        run_id=run.id,
        job=run.job,
        status=run.status,
        attempt=run.attempt,
        resumed_from=None,
        already_completed=already_completed,
        totals=dict(run.totals),
        quarantined_by_reason=dict(run.quarantined_by_reason),
        batches=sum(run.batches_done.values()),
        elapsed=time.monotonic() - started,
    )
