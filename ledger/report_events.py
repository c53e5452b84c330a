"""Each event of a run's stream in words: the run's own work.

One function per event type says what the event means for the run, in a
sentence whose recorded values stay marked (see `ledger.report_words`):
attempts, steps, checkpoints, failures and quarantined records here;
operators' decisions in `ledger.report_decisions`, a consumer's
partitions in `ledger.report_messages`. Events that are routine by the
thousand (a batch begun, a heartbeat) say nothing: the report counts
them, and keeps what later events need (the batch in flight).
"""

from __future__ import annotations

from typing import Any

from ledger.report_decisions import DECISION_TELLERS, tell_effect_event
from ledger.report_messages import MESSAGE_TELLERS
from ledger.report_story import Story, Teller, Told, worker_name
from ledger.report_words import Words, recorded, who

__all__ = [
    "QUIET",
    "Story",
    "Told",
    "event_name",
    "tell_effect_event",
    "tell_run_event",
]

# Recorded by the thousand and told by the events around them.
QUIET = frozenset({"Run.BatchStarted", "Run.LeaseRenewed", "MessagesStarted"})


def _error(event: Any) -> Words:
    return (recorded(f"{event.error_class}: {event.error_message}"),)


def _in_flight(story: Story) -> Words:
    batch = story.in_flight
    if batch is None:
        return ()
    if "step" in batch:
        return (
            ", in step ",
            recorded(batch["step"]),
            f", batch {batch['batch']} (from row {batch['first_record']:,})",
        )
    return (f", in message batch {batch['batch']}",)


def _started(e: Any, story: Story, run: Any) -> Told:
    source = e.input
    if source.get("kind") == "kafka":
        what: Words = (
            "consumer group ",
            recorded(source.get("group")),
            ", member ",
            recorded(source.get("member")),
            ", topics ",
            recorded(", ".join(map(str, source.get("topics", [])))),
        )
    else:
        what = (
            "input ",
            recorded(source.get("name")),
            " (sha256 ",
            recorded(source.get("sha256")),
            f", {source.get('size') or 0:,} bytes)",
        )
    return Told(
        "run",
        (
            "run started: job ",
            recorded(e.job),
            " version ",
            recorded(e.job_version),
            ", ",
            *what,
            ", steps ",
            recorded(", ".join(e.steps)),
        ),
    )


def _attempt_started(e: Any, story: Story, run: Any) -> Told:
    by = worker_name(e.worker)
    story.ended_at = None
    story.attempts[e.attempt] = {
        "attempt": e.attempt,
        "started_at": e.timestamp.isoformat(),
        "ended_at": None,
        "outcome": "open",
        "worker": e.worker,
        "resumed_from": e.resume,
        "error": None,
        "ended_by": None,
    }
    resume = e.resume
    if resume is None:
        where: Words = ("nothing left to do",)
    elif not resume.get("after_record") and not resume.get("position"):
        where = ("step ", recorded(resume["step"]), f", batch {resume['batch']}")
    else:
        where = (
            "step ",
            recorded(resume["step"]),
            f", batch {resume['batch']}, after row {resume['after_record']:,}",
        )
    words = (f"attempt {e.attempt} started by ", who(by), ", from ", *where)
    return Told("attempt", words, e.attempt, by)


def _attempt_crashed(e: Any, story: Story, run: Any) -> Told:
    by = worker_name(e.detected_by)
    words = (
        f"attempt {e.attempt} found crashed: ",
        recorded(e.evidence),
        *_in_flight(story),
        "; found by ",
        who(by),
    )
    story.end_attempt(
        e.attempt,
        e.timestamp.isoformat(),
        outcome="crashed",
        error=e.evidence,
        ended_by=by,
    )
    return Told("attempt", words, e.attempt, by)


def _worker_paused(e: Any, story: Story, run: Any) -> Told:
    by = worker_name(run.worker if run is not None else None)
    words = (
        f"the worker of attempt {e.attempt} stopped at a batch boundary, as "
        "asked, and waits",
    )
    return Told("worker", words, e.attempt, by)


def _appends_refused(e: Any, story: Story, run: Any) -> Told:
    refused = ", ".join(e.refused) or "nothing"
    words = (
        f"the late worker of attempt {e.attempt} was refused (",
        recorded(refused),
        "): ",
        recorded(e.why),
    )
    return Told("worker", words, e.attempt, f"the late worker of attempt {e.attempt}")


def _step_started(e: Any, story: Story, run: Any) -> Told:
    words = ("step ", recorded(e.step), f" started at batch {e.from_batch}")
    return Told("step", words, e.attempt)


def _batch_started(e: Any, story: Story, run: Any) -> None:
    story.in_flight = {
        "step": e.step,
        "batch": e.batch,
        "first_record": e.first_record,
    }


def _record_quarantined(e: Any, story: Story, run: Any) -> Told:
    again = run is not None and e.quarantine_id in run.quarantine_states
    words = (
        f"record {e.record:,} of step ",
        recorded(e.step),
        f", batch {e.batch}, quarantined as ",
        recorded(e.reason),
        ": ",
        recorded(e.detail),
        " (id ",
        recorded(e.quarantine_id[:8]),
        ", again on a replayed batch)" if again else ")",
    )
    return Told("quarantine", words, e.attempt, target=e.quarantine_id)


def _batch_checkpointed(e: Any, story: Story, run: Any) -> Told:
    story.in_flight = None
    words = (
        "checkpoint: step ",
        recorded(e.step),
        f", batch {e.batch}, rows {e.first_record:,}–{e.last_record:,} (",
        recorded(e.position_kind),
        f" {e.position:,}): {e.records:,} records, {e.written:,} written, "
        f"{e.quarantined:,} quarantined",
    )
    return Told("checkpoint", words, e.attempt)


def _step_completed(e: Any, story: Story, run: Any) -> Told:
    words = ("step ", recorded(e.step), f" completed after {e.batches:,} batches")
    return Told("step", words, e.attempt)


def _step_failed(e: Any, story: Story, run: Any) -> Told:
    batch = "" if e.batch is None else f" in batch {e.batch}"
    words = ("step ", recorded(e.step), f" failed{batch}: ", *_error(e))
    return Told("failure", words, e.attempt)


def _run_failed(e: Any, story: Story, run: Any) -> Told:
    error = f"{e.error_class}: {e.error_message}"
    story.end_attempt(e.attempt, e.timestamp.isoformat(), outcome="failed", error=error)
    return Told("attempt", (f"attempt {e.attempt} failed: ", *_error(e)), e.attempt)


def _run_completed(e: Any, story: Story, run: Any) -> Told:
    story.end_attempt(e.attempt, e.timestamp.isoformat(), outcome="completed")
    return Told("attempt", (f"attempt {e.attempt} completed the run",), e.attempt)


_RUN_TELLERS: dict[str, Teller] = {
    "Run.Started": _started,
    "Run.AttemptStarted": _attempt_started,
    "Run.AttemptCrashed": _attempt_crashed,
    "Run.WorkerPaused": _worker_paused,
    "Run.AppendsRefused": _appends_refused,
    "Run.StepStarted": _step_started,
    "Run.BatchStarted": _batch_started,
    "Run.RecordQuarantined": _record_quarantined,
    "Run.BatchCheckpointed": _batch_checkpointed,
    "Run.StepCompleted": _step_completed,
    "Run.StepFailed": _step_failed,
    "Run.RunFailed": _run_failed,
    "Run.RunCompleted": _run_completed,
    **DECISION_TELLERS,
    **MESSAGE_TELLERS,
}


def event_name(event: Any) -> str:
    return str(type(event).__qualname__)


def tell_run_event(event: Any, story: Story, run: Any) -> Told | None:
    """The event in words, told against the run as it stood before it;
    None for a quiet one. A type this code does not know is named as is."""
    teller = _RUN_TELLERS.get(event_name(event))
    if teller is None:
        return Told("other", ("recorded ", recorded(event_name(event))))
    told = teller(event, story, run)
    if event_name(event) in QUIET:
        return None
    return told
