"""What a run report's event tellers share: the told event, and the story.

Each event of a run is told in words by one function (`ledger.report_events`
for the run's own work, `ledger.report_decisions` for operators' decisions
and effects, `ledger.report_messages` for a consumer's partitions). `Story`
carries what later events need from earlier ones: each attempt's worker
and end, the batch in flight when an attempt stopped, and a consumer's
positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger.report_words import Words
from ledger.worker import describe

__all__ = ["Story", "Teller", "Told", "worker_name"]


@dataclass(frozen=True)
class Told:
    """One event in words: its kind, the attempt, who, why, and the
    operator action it is (if it is one) with the record or effect it
    names."""

    kind: str
    words: Words
    attempt: int | None = None
    by: str | None = None
    reason: str | None = None
    action: str | None = None
    target: str | None = None


@dataclass
class Story:
    """What the events so far said that the next ones need."""

    attempts: dict[int, dict[str, Any]] = field(default_factory=dict)
    in_flight: dict[str, Any] | None = None
    consumed: dict[str, dict[str, int]] = field(default_factory=dict)
    ended_at: str | None = None

    def end_attempt(self, number: int | None, at: str, **outcome: Any) -> None:
        self.ended_at = at
        self.in_flight = None
        if number is not None and number in self.attempts:
            self.attempts[number].update(ended_at=at, **outcome)


# Tells an event against the story so far and the run before it; None
# for an event that is only counted.
Teller = Callable[[Any, Story, Any], "Told | None"]


def worker_name(worker: dict[str, Any] | None) -> str:
    return describe(worker) if worker else "no worker"
