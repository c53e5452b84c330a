"""Operator decisions about a run, recorded as facts next to the work.

Every control is an event in the run's own stream, naming who decided,
when and why, so that the audit trail holds each human decision beside
the machine's. A control that makes no sense for the run's state is
refused before anything is appended.
"""

from __future__ import annotations

import getpass
import os
import socket
import unicodedata
from typing import TYPE_CHECKING, Any

from eventsourcing.domain import Aggregate

from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.run import Run

__all__ = [
    "ControlRefused",
    "PauseLifted",
    "PauseRequested",
    "PausedAtBoundary",
    "RunAbandoned",
    "abandon",
    "lift_pause",
    "operator",
    "pause",
    "readable_reason",
]


class ControlRefused(LedgerError):
    """A control that makes no sense for the run as it stands."""


class PausedAtBoundary(Exception):
    """A worker about to begin a batch found an operator's pause in force:
    it begins nothing and waits until the pause is lifted."""


def readable_reason(text: str) -> str:
    """The reason as it is recorded (trimmed); refused unless it is one line
    of text that can be stored and shown (a shell can pass bytes that are
    not UTF-8, and they reach here as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ControlRefused(
            "the reason is not valid UTF-8 text; pass --reason with plain text"
        ) from None
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise ControlRefused(
            "the reason must be one line of text without control characters "
            "(newlines, tabs, NUL); pass it on one line"
        )
    if not text.strip():
        raise ControlRefused(
            "a reason is required: pass --reason TEXT saying why (it is "
            "recorded with the decision)"
        )
    return text.strip()


def operator(name: str | None = None) -> str:
    """Who is deciding: `--as NAME`, else LEDGER_OPERATOR, else user@host."""
    chosen = (name or os.environ.get("LEDGER_OPERATOR", "")).strip()
    if chosen:
        return chosen
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


class RunAbandoned(Aggregate.Event):
    """An operator declared that the run's worker will never return.

    An open attempt is closed with it; that worker's later appends are
    refused (the run's version moved on). The run can be resumed by a new
    worker from its resume point.
    """

    by: str
    reason: str
    attempt: int | None
    worker: dict[str, Any] | None

    def apply(self, run: Run) -> None:
        run.attempt_open = False
        run.status = "abandoned"
        run.abandoned = {"by": self.by, "reason": self.reason}


def abandon(run: Run, by: str, reason: str) -> None:
    """Marks the run abandoned; refused for a finished or abandoned run."""
    if not reason.strip():
        raise ControlRefused(
            "abandoning a run needs a reason: pass --reason TEXT saying why its "
            "worker will not return"
        )
    if run.status == "completed":
        raise ControlRefused(f"run {run.id} is completed; there is nothing to abandon")
    if run.status == "abandoned":
        raise ControlRefused(
            f"run {run.id} is already abandoned; `ledger resume {str(run.id)[:8]}` "
            "starts a new attempt from its resume point"
        )
    run.trigger_event(
        RunAbandoned,
        by=by,
        reason=reason.strip()[:500],
        attempt=run.attempt if run.attempt_open else None,
        worker=run.worker if run.attempt_open else None,
    )


class PauseRequested(Aggregate.Event):
    """An operator asked the run to pause.

    A worker holding the run stops at its next batch boundary, records
    `WorkerPaused` and waits; a run with no worker is paused at once.
    `state` is the run's status from this event on.
    """

    by: str
    reason: str
    attempt: int | None
    state: str

    def apply(self, run: Run) -> None:
        run.paused = {"by": self.by, "reason": self.reason}
        run.status_before_pause = run.status
        run.status = self.state


class PauseLifted(Aggregate.Event):
    """An operator lifted the pause: a waiting worker goes on, or the next
    worker to claim the run does. `state` is the run's status again."""

    by: str
    reason: str
    attempt: int | None
    state: str

    def apply(self, run: Run) -> None:
        run.paused = None
        run.pauses_lifted += 1
        run.status = self.state


def pause(run: Run, by: str, reason: str) -> None:
    """Asks the run to pause at its next batch boundary."""
    short = str(run.id)[:8]
    if not reason.strip():
        raise ControlRefused(
            "pausing a run needs a reason: pass --reason TEXT saying why"
        )
    if run.status in ("completed", "abandoned"):
        raise ControlRefused(f"run {run.id} is {run.status}; there is no work to pause")
    if run.paused is not None:
        raise ControlRefused(
            f"run {run.id} is already paused by {run.paused['by']} "
            f"({run.paused['reason']}); `ledger resume {short}` lifts the pause"
        )
    run.trigger_event(
        PauseRequested,
        by=by,
        reason=reason.strip()[:500],
        attempt=run.attempt if run.attempt_open else None,
        state=run.status if run.attempt_open else "paused",
    )


def lift_pause(run: Run, by: str, reason: str) -> None:
    """Lifts an operator's pause; refused when the run is not paused."""
    if run.paused is None:
        raise ControlRefused(f"run {run.id} is not paused; there is no pause to lift")
    if run.attempt_open:
        state = "running"
    else:
        before = run.status_before_pause
        state = before if before not in ("", "paused") else "started"
    run.trigger_event(
        PauseLifted,
        by=by,
        reason=reason.strip()[:500] or "pause lifted",
        attempt=run.attempt if run.attempt_open else None,
        state=state,
    )
