"""Running a job: find its run, claim it, and hand the work to an attempt.

The same job on the same input version finds the same run. A completed
run is not redone unless asked. An unfinished one is claimed: if the
attempt that holds it belongs to a dead worker, that attempt is closed as
crashed first, with the evidence, so a restart after `kill -9` needs no
manual step. The work itself is `ledger.attempt.Attempt`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from uuid import UUID, uuid4

import structlog

from ledger.attempt import Attempt, NoProgress, ProgressSink, save_run
from ledger.effects import EffectRegistry
from ledger.errors import (
    InputError,
    LedgerError,
    RunArchived,
    RunHeld,
    RunPaused,
    Superseded,
)
from ledger.input_runs import InputRuns, input_runs_id
from ledger.inputs import (
    RUNTIME_PARAMETERS,
    describe_input,
    input_key,
    resolve_params,
)
from ledger.job import InputVersion, Job, RunContext, Step
from ledger.keys import file_site
from ledger.lease import Heartbeat
from ledger.policy import use_ledger_policy
from ledger.redaction import enforced
from ledger.run import ResumePoint, Run
from ledger.store import AggregateNotFoundError, Ledger
from ledger.worker import current_worker, lease_until, liveness

__all__ = [
    "RUNTIME_PARAMETERS",
    "ProgressSink",
    "RunSummary",
    "claim_run",
    "describe_input",
    "find_run",
    "resolve_params",
    "run_job",
]

log = structlog.get_logger(__name__)


@dataclass
class RunSummary:
    """What one `ledger run` did, for the closing summary."""

    run_id: UUID
    job: str
    status: str
    attempt: int
    resumed_from: ResumePoint | None
    already_completed: bool = False
    steps: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    events_written: int = 0
    elapsed: float = 0.0

    # What this attempt's effects did (see `EffectRegistry.tally`).
    effects: dict[str, int] = field(default_factory=dict)


def run_job(
    ledger: Ledger,
    job: Job,
    job_ref: str,
    source: InputVersion,
    params: dict[str, Any],
    *,
    new_run: bool = False,
    progress: ProgressSink | None = None,
    run_id: UUID | None = None,
) -> RunSummary:
    """Runs (or resumes) the job on the input; returns what happened.

    `run_id` names the run to resume when it is not the input version's
    latest (`ledger resume` and `ledger rerun` of an older run).
    """
    progress = progress or NoProgress()
    started = time.monotonic()
    key = input_key(job, source, params)

    # The ledger's policy, with the job's on top, redacts what is recorded;
    # the key above is a digest of the parameters as given.
    use_ledger_policy(ledger)
    policy = job.policy()

    # Find the run for this input version; a completed one is not redone.
    run, index = find_run(ledger, key, new_run=new_run)
    if run_id is not None and index is not None and str(run_id) in index.run_ids:
        run = ledger.repository.get(run_id)
    if run is not None and run.is_completed:
        return _summary(run, started, already_completed=True)

    # Open the job's output, then start or claim the run, then work.
    run_id = run.id if run else uuid4()
    registry = file_effects(ledger, job, run_id, source)
    context = RunContext(run_id=run_id, input=source, params=params, registry=registry)
    steps = _open_job(job, context)
    try:
        _check_steps(job, steps, run)
    except LedgerError:
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
                input=policy.redact(source.as_dict()),
                params=policy.redact(params),
                input_key=key,
                steps=[step.name for step in steps],
            )
            index = index or InputRuns.create(job.name, key)
            index.add_run(run.id)
        attempt, resumed_from, events = claim_run(ledger, run, index)
        worker = Attempt(
            ledger, run, attempt, steps, progress, events, job.redact, params, registry
        )
        with enforced(policy), Heartbeat(ledger, run.id, attempt) as heartbeat:
            registry.bind(attempt, f"attempt {attempt}", heartbeat.check)
            worker.work()
        completed = True
    finally:
        _on_sigterm(previous)
        job.close(context, completed=completed)

    summary = _summary(worker.run, started)
    summary.attempt = attempt
    summary.resumed_from = resumed_from
    summary.events_written = worker.events + registry.tally["events"]
    summary.effects = {k: v for k, v in registry.tally.items() if k != "events"}
    return summary


def file_effects(
    ledger: Ledger, job: Job, run_id: UUID, source: InputVersion
) -> EffectRegistry:
    """The effect registry of a file job's run: keys scoped to the run and
    its input version."""
    return EffectRegistry(
        ledger,
        run_id,
        job.effects,
        lambda step: file_site(run_id, source.sha256, step),
    )


def _open_job(job: Job, context: RunContext) -> Sequence[Step]:
    """The job's steps; a job that cannot open is bad input, not a crash."""
    try:
        return job.open(context)
    except LedgerError:
        raise
    except Exception as error:
        raise InputError(
            job.name,
            f"could not open its input or output ({type(error).__name__}: {error})",
            "check the job's --param values and the files they name",
        ) from error


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


def find_run(
    ledger: Ledger, key: str, *, new_run: bool
) -> tuple[Run | None, InputRuns | None]:
    try:
        index: InputRuns = ledger.repository.get(input_runs_id(key))
    except AggregateNotFoundError:
        return None, None
    if new_run:
        return None, index
    try:
        latest: Run = ledger.repository.get(UUID(index.run_ids[-1]))
    except AggregateNotFoundError:
        # Only an ended run leaves the live ledger; redoing it is a choice.
        raise RunArchived(index.run_ids[-1]) from None
    return latest, index


def claim_run(
    ledger: Ledger, run: Run, index: InputRuns | None
) -> tuple[int, ResumePoint | None, int]:
    """Opens a new attempt; closes a dead worker's attempt first."""
    me = current_worker()

    # An operator's pause holds the run until it is lifted.
    if run.paused is not None:
        raise RunPaused(str(run.id), run.paused["by"], run.paused["reason"])

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
    try:
        save_run(ledger, run, attempt, index)
    except Superseded:
        # Another worker claimed it at the same moment, or an operator
        # decided about it: this worker has not begun anything.
        raise RunHeld(
            str(run.id), "another worker's claim was recorded at the same moment"
        ) from None
    log.info(
        "attempt.started",
        run_id=str(run.id),
        job=run.job,
        attempt=attempt,
        resume=resumed_from.as_dict() if resumed_from else None,
    )
    return attempt, resumed_from, events


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
        steps=list(run.steps),
        totals=dict(run.totals),
        quarantined_by_reason=dict(run.quarantined_by_reason),
        batches=sum(run.batches_done.values()),
        elapsed=time.monotonic() - started,
    )
