"""A run's incident report: `ledger report RUN`, and its HTTP twin.

The report is what a reviewer reads weeks after an incident: what ran
(job, version, input version, parameters), every event that mattered in
order (attempts, steps, checkpoints, failures, quarantines, effects and
every operator decision with who, when and why), the resume point after
each event that moved it, and how the run ended.

It is built from the run's own event stream, read once and folded
through the same `Run` aggregate a worker uses (`ledger.replay`), plus
the streams of the run's effects that did more than one clean call (the
read tables name them, and count the clean ones). The read tables are
used to find the run and its effects, never for the story itself. The
document (`RunReport.document`) is the JSON form; Markdown and HTML are
rendered from it by `ledger.report_text`; `ledger.report_source` reads
the events.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ledger.errors import LedgerError
from ledger.replay import Replay, state_of
from ledger.report_events import (
    QUIET,
    Story,
    Told,
    event_name,
    tell_effect_event,
    tell_run_event,
)
from ledger.report_words import Words, joined, resume_words, shown_time

if TYPE_CHECKING:
    from eventsourcing.domain import Aggregate


__all__ = [
    "REPORT_VERSION",
    "NoEventsToReport",
    "ReportEntry",
    "RunReport",
    "build_report",
]

# Bumped only when a field changes meaning or goes away; fields are added
# without a bump.
REPORT_VERSION = 1

# Event fields left out of `details`: the stream's own bookkeeping (said
# by `at` and `version`), the store's hash chain, and what a job handed
# over as data: a quarantined record's payload and its sealed copy, an
# effect's result (`ledger quarantine show` and `ledger effects show`
# give those, to whoever may see them).
_NOT_DETAILS = frozenset(
    {
        "originator_id",
        "originator_version",
        "originator_topic",
        "timestamp",
        "prev_hash",
        "hash",
        "payload",
        "sealed",
        "result",
    }
)


class NoEventsToReport(LedgerError):
    """The read tables know the run, but the live log holds none of its
    events (its run was archived, or the read tables are from another
    ledger)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} has no events in this ledger's log, though its read "
            "tables name it: if it was archived, `ledger archive load DIR --run "
            f"{run_id[:8]}` brings it back; else rebuild the read tables with "
            "`ledger project --rebuild`"
        )
        self.run_id = run_id


@dataclass(frozen=True)
class ReportEntry:
    """One event of the timeline, and the run as it stood after it."""

    at: str
    stream: str
    stream_id: str
    version: int
    event: str
    kind: str
    attempt: int | None
    by: str | None
    reason: str | None
    action: str | None
    target: str | None
    words: Words
    details: dict[str, Any]
    state: str
    resume_point: dict[str, Any] | None
    positions: dict[str, int]
    resume_moved: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "stream": self.stream,
            "stream_id": self.stream_id,
            "version": self.version,
            "event": self.event,
            "kind": self.kind,
            "attempt": self.attempt,
            "by": self.by,
            "reason": self.reason,
            "action": self.action,
            "target": self.target,
            "summary": joined(self.words),
            "details": self.details,
            "state": self.state,
            "resume_point": self.resume_point,
            "positions": self.positions,
            "resume_moved": self.resume_moved,
        }


@dataclass(frozen=True)
class RunReport:
    """Everything a report says; `document()` is its JSON form."""

    run: dict[str, Any]
    outcome: dict[str, Any]
    outcome_words: Words
    attempts: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    timeline: list[ReportEntry]
    events: dict[str, Any]

    @property
    def actions(self) -> list[ReportEntry]:
        """Every operator decision, oldest first."""
        return [entry for entry in self.timeline if entry.kind == "operator"]

    def document(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "run": self.run,
            "outcome": {**self.outcome, "summary": joined(self.outcome_words)},
            "attempts": self.attempts,
            "operator_actions": [_action(entry) for entry in self.actions],
            "quarantine": self.quarantine,
            "timeline": [entry.as_dict() for entry in self.timeline],
            "events": self.events,
        }


def _action(entry: ReportEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "action": entry.action,
        "by": entry.by,
        "reason": entry.reason,
        "attempt": entry.attempt,
        "target": entry.target,
        "summary": joined(entry.words),
    }


def _details(event: Any) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(event).items()
        if name not in _NOT_DETAILS and not name.startswith("_")
    }


def _merged(
    run_events: list[Aggregate.Event], effects: dict[str, list[Aggregate.Event]]
) -> Iterator[tuple[str | None, Aggregate.Event]]:
    """The run's events in their order, with its effects' events placed
    among them by time (each stream keeps its own order)."""
    streams: list[Iterator[tuple[str | None, Aggregate.Event]]] = [
        ((None, event) for event in run_events)
    ]
    streams += [((key, event) for event in found) for key, found in effects.items()]
    yield from heapq.merge(*streams, key=lambda item: item[1].timestamp)


def build_report(
    run_events: list[Aggregate.Event],
    effects: dict[str, list[Aggregate.Event]],
    effect_counts: dict[str, int],
) -> RunReport:
    """The report of a run from its events, in stream order."""
    replay = Replay()
    story = Story()
    quiet: Counter[str] = Counter()
    timeline: list[ReportEntry] = []
    names = {key: found[0].__dict__.get("name", "") for key, found in effects.items()}
    seen: tuple[Any, ...] = (None, {})
    for key, event in _merged(run_events, effects):
        if key is None:
            # Told against the run before it, then folded.
            told = tell_run_event(event, story, replay.run)
            run = replay.apply(event)
            if told is None:
                quiet[event_name(event)] += 1
                continue
        elif replay.run is None:
            continue
        else:
            told = tell_effect_event(key, event, str(names[key]))
            run = replay.run
        point = replay.resume_point()
        now = (point, dict(run.partitions))
        timeline.append(_entry(event, key, told, _state(run), now, moved=now != seen))
        seen = now
    return _finish(replay, story, timeline, quiet, effects, effect_counts)


def _entry(
    event: Any,
    key: str | None,
    told: Told,
    state: str,
    now: tuple[Any, ...],
    *,
    moved: bool,
) -> ReportEntry:
    return ReportEntry(
        at=event.timestamp.isoformat(),
        stream="run" if key is None else "effect",
        stream_id=str(event.originator_id),
        version=int(event.originator_version),
        event=event_name(event),
        kind=told.kind,
        attempt=told.attempt,
        by=told.by,
        reason=told.reason,
        action=told.action,
        target=told.target,
        words=told.words,
        details=_details(event),
        state=state,
        resume_point=now[0],
        positions=now[1],
        resume_moved=moved,
    )


def _state(run: Any) -> str:
    # A consumer's run ends when it is stopped: "completed" would read as
    # "nothing left to consume", as `ledger status` says too.
    state = state_of(run)
    if state == "completed" and run.input.get("kind") == "kafka":
        return "stopped"
    return state


def _finish(
    replay: Replay,
    story: Story,
    timeline: list[ReportEntry],
    quiet: Counter[str],
    effects: dict[str, list[Aggregate.Event]],
    effect_counts: dict[str, int],
) -> RunReport:
    run = replay.run
    if run is None:
        raise ValueError("a report needs at least the run's first event")
    quarantine = _quarantine(run, timeline)
    outcome = {
        "state": _state(run),
        "attempts": run.attempt,
        "ended_at": story.ended_at,
        "last_checkpoint": replay.last_checkpoint,
        "resume_point": replay.resume_point(),
        "positions": dict(run.partitions),
        "totals": dict(run.totals),
        "quarantined": dict(Counter(item["state"] for item in quarantine)),
        "effects": effect_counts,
        "last_event_at": replay.last_at,
    }
    return RunReport(
        run={
            "run_id": str(run.id),
            "job": run.job,
            "job_version": run.job_version,
            "job_ref": run.job_ref,
            "kind": "consumer" if run.input.get("kind") == "kafka" else "file",
            "input": run.input,
            "input_key": run.input_key,
            "params": run.params,
            "steps": list(run.steps),
            "started_at": timeline[0].at if timeline else replay.last_at,
            "consumed": story.consumed,
        },
        outcome=outcome,
        outcome_words=_outcome_words(outcome, story),
        attempts=[story.attempts[n] for n in sorted(story.attempts)],
        quarantine=quarantine,
        timeline=timeline,
        events={
            "run": replay.events,
            "shown": len(timeline),
            "not_shown": dict(sorted(quiet.items())),
            "effects_told": len(effects),
            "effect_events": sum(len(found) for found in effects.values()),
            "quiet_types": sorted(QUIET),
        },
    )


def _quarantine(run: Any, timeline: list[ReportEntry]) -> list[dict[str, Any]]:
    """Each quarantined record once, as first quarantined, with where it
    stands now and the decision that settled it."""
    records: dict[str, dict[str, Any]] = {}
    for entry in timeline:
        if entry.kind != "quarantine" or entry.target in records:
            continue
        details = entry.details
        records[str(entry.target)] = {
            "quarantine_id": entry.target,
            "at": entry.at,
            "step": details.get("step", "consume"),
            "batch": details.get("batch"),
            "record": details.get("record", details.get("offset")),
            "topic": details.get("topic"),
            "partition": details.get("partition"),
            "reason": details.get("reason"),
            "detail": details.get("detail"),
            "attempt": entry.attempt,
            "state": run.quarantine_states.get(entry.target, "pending"),
            "decision": run.quarantine_decisions.get(entry.target),
        }
    return list(records.values())


def _outcome_words(outcome: dict[str, Any], story: Story) -> Words:
    state = outcome["state"]
    attempts = outcome["attempts"]
    when = f" at {shown_time(outcome['ended_at'])}" if outcome["ended_at"] else ""
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    words: Words = (f"{state} after {tries}{when}",)
    if outcome["resume_point"] is not None and state not in ("completed", "stopped"):
        words += ("; resumes at ", *resume_words(outcome["resume_point"]))
    counted = outcome["quarantined"]
    if counted:
        parts = ", ".join(f"{n:,} {name}" for name, n in sorted(counted.items()))
        words += (f"; quarantined records: {parts}",)
    else:
        words += ("; nothing quarantined",)
    return words
