"""Operators' decisions about a run, and its effects, in words.

Each decision is told with who took it and why, as recorded: a pause and
its lifting, a rerun from a named point, an abandonment, a quarantined
record discarded or promoted (and quarantined again). An effect's events
come from its own stream, named by its idempotency key; an operator's
confirmation or retry of an uncertain effect is a decision like the rest.
"""

from __future__ import annotations

from typing import Any

from ledger.report_story import Story, Teller, Told
from ledger.report_words import Words, recorded, who

__all__ = ["DECISION_TELLERS", "tell_effect_event"]


def _operator(action: str, e: Any, words: Words, target: str | None = None) -> Told:
    attempt = getattr(e, "attempt", None)
    return Told("operator", words, attempt, e.by, e.reason, action, target)


def _abandoned(e: Any, story: Story, run: Any) -> Told:
    closed = "" if e.attempt is None else f"; attempt {e.attempt} closed"
    story.end_attempt(
        e.attempt,
        e.timestamp.isoformat(),
        outcome="abandoned",
        error=e.reason,
        ended_by=e.by,
    )
    words = ("abandoned by ", who(e.by), ": ", recorded(e.reason), closed)
    return _operator("abandon", e, words)


def _pause_requested(e: Any, story: Story, run: Any) -> Told:
    then = (
        "; its worker stops at the next batch boundary"
        if e.attempt is not None
        else "; no worker may start it until the pause is lifted"
    )
    words = ("pause asked by ", who(e.by), ": ", recorded(e.reason), then)
    return _operator("pause", e, words)


def _pause_lifted(e: Any, story: Story, run: Any) -> Told:
    words = ("pause lifted by ", who(e.by), ": ", recorded(e.reason))
    return _operator("resume", e, words)


def _rewound(e: Any, story: Story, run: Any) -> Told:
    story.ended_at = None
    words = (
        "rerun from step ",
        recorded(e.step),
        f", batch {e.batch}, decided by ",
        who(e.by),
        ": ",
        recorded(e.reason),
    )
    return _operator("rerun", e, words)


def _discarded(e: Any, story: Story, run: Any) -> Told:
    words = (
        "record ",
        recorded(e.quarantine_id[:8]),
        " discarded by ",
        who(e.by),
        ": ",
        recorded(e.reason),
    )
    return _operator("discard", e, words, e.quarantine_id)


def _promoted(e: Any, story: Story, run: Any) -> Told:
    from ledger.quarantine import outcome_words

    outcome = outcome_words(
        e.outcome, e.step, e.error_class, e.detail, e.requarantined_as
    )
    words = (
        "record ",
        recorded(e.quarantine_id[:8]),
        f" promoted (promotion {e.promotion}) by ",
        who(e.by),
        ": ",
        recorded(e.reason),
        "; ",
        recorded(outcome),
    )
    return _operator("promote", e, words, e.quarantine_id)


def _requarantined(e: Any, story: Story, run: Any) -> Told:
    words = (
        f"record {e.record:,} of step ",
        recorded(e.step),
        " quarantined again as ",
        recorded(e.reason),
        ": ",
        recorded(e.detail),
        " (id ",
        recorded(e.quarantine_id[:8]),
        ", promoted from ",
        recorded(e.previous_id[:8]),
        ")",
    )
    return Told("quarantine", words, target=e.quarantine_id)


DECISION_TELLERS: dict[str, Teller] = {
    "RunAbandoned": _abandoned,
    "PauseRequested": _pause_requested,
    "PauseLifted": _pause_lifted,
    "RunRewound": _rewound,
    "RecordDiscarded": _discarded,
    "RecordPromoted": _promoted,
    "RecordRequarantined": _requarantined,
}


def tell_effect_event(key: str, event: Any, name: str) -> Told:
    """An event of one of the run's effects (their streams are named by
    their idempotency keys)."""
    kind = type(event).__qualname__.removeprefix("Effect.")
    effect: Words = ("effect ", recorded(name), " ", recorded(key[:8]))
    attempt = getattr(event, "attempt", None)
    by = getattr(event, "actor", None)
    if kind == "Intended":
        record = " ".join(str(part) for part in event.record)
        return Told(
            "effect",
            (*effect, " intended for ", recorded(record), " of step ",
             recorded(event.step)),
            attempt, by,
        )  # fmt: skip
    if kind == "Completed":
        return Told("effect", (*effect, " completed"), attempt, by)
    if kind == "Failed":
        known = "" if event.outcome_known else " (whether it landed is unknown)"
        error = recorded(f"{event.error_class}: {event.message}")
        return Told("effect", (*effect, " failed: ", error, known), attempt, by)
    if kind == "Repeated":
        again = (*effect, " called again after ", recorded(event.after))
        return Told("effect", again, attempt, by)
    if kind == "Held":
        held = (*effect, " held as uncertain: ", recorded(event.why))
        return Told("effect", held, attempt, by)
    if kind in ("Confirmed", "Released"):
        done = "confirmed (it happened)" if kind == "Confirmed" else "retried"
        words = (*effect, f" {done} by ", who(event.by), ": ",
                 recorded(event.reason))  # fmt: skip
        action = "effect confirmed" if kind == "Confirmed" else "effect retried"
        return Told("operator", words, None, event.by, event.reason, action, key)
    return Told("effect", (*effect, " ", recorded(kind)), attempt, by)
