"""An effect: one side effect outside the ledger, and what became of it.

Each effect is a stream of its own, whose id is the effect's idempotency
key (`ledger.keys`). Its first event, the intent, is stored before the
downstream is called; the database refuses a second stream with the same
id, so two workers can never both believe they were first. What follows
records the outcome, each repeat of the call, and an operator's decision.

States, from the events:

- `intended`: the intent is recorded, no outcome yet. Either the call is
  in flight, or the worker died between the call and its record.
- `completed`: the call returned (or an operator confirmed it happened).
- `failed`: the call raised, and the downstream did not apply it.
- `uncertain`: no one knows whether the downstream applied it, and the
  downstream does not honour idempotency keys: it is not called again
  until an operator decides (`confirmed` or `released`).
- `released`: an operator decided it did not happen; it is called again
  the next time the job reaches it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.controls import ControlRefused, readable_reason

__all__ = [
    "COMPLETED",
    "FAILED",
    "INTENDED",
    "RELEASED",
    "UNCERTAIN",
    "Effect",
    "EffectDecisionRefused",
]

INTENDED = "intended"
COMPLETED = "completed"
FAILED = "failed"
UNCERTAIN = "uncertain"
RELEASED = "released"

# Why a call was made again with the same key.
AFTER_CRASH = "crash"
AFTER_FAILURE = "failure"
AFTER_UNKNOWN = "unknown outcome"
AFTER_RELEASE = "operator"


class EffectDecisionRefused(ControlRefused):
    """An operator's decision that does not fit the effect's state."""


class Effect(Aggregate):
    """One effect's stream; see the module docstring."""

    class Intended(Aggregate.Created):
        run_id: str
        name: str
        step: str
        record: list[Any]
        part: str
        honours_keys: bool
        attempt: int
        actor: str

    @classmethod
    def intend(
        cls,
        key: UUID,
        *,
        run_id: UUID,
        name: str,
        step: str,
        record: list[Any],
        part: str,
        honours_keys: bool,
        attempt: int,
        actor: str,
    ) -> Effect:
        return cls._create(
            cls.Intended,
            id=key,
            run_id=str(run_id),
            name=name,
            step=step,
            record=list(record),
            part=part,
            honours_keys=honours_keys,
            attempt=attempt,
            actor=actor,
        )

    def __init__(
        self,
        *,
        run_id: str,
        name: str,
        step: str,
        record: list[Any],
        part: str,
        honours_keys: bool,
        attempt: int,
        actor: str,
    ) -> None:
        self.run_id = run_id
        self.name = name
        self.step = step
        self.record = record
        self.part = part
        self.honours_keys = honours_keys
        self.state = INTENDED

        # The attempt of the latest call (0 for an operator's promotion), how
        # often the downstream was called, and why each repeat was made: the
        # write side's own count, which the read side's must equal.
        self.attempt = attempt
        self.calls = 1
        self.repeats: dict[str, int] = {}
        self.result: Any = None
        self.result_kept = False
        self.error: str | None = None

        # The last operator decision, in words ("confirmed by olga").
        self.decided: str | None = None

        # False after a call that raised without knowing whether the
        # downstream applied it.
        self.outcome_known = True

    class Completed(Aggregate.Event):
        run_id: str
        attempt: int
        actor: str
        result: Any
        result_kept: bool

        def apply(self, effect: Effect) -> None:
            effect.state = COMPLETED
            effect.result = self.result
            effect.result_kept = self.result_kept
            effect.error = None

    def complete(
        self, run_id: UUID, attempt: int, actor: str, result: Any, kept: bool
    ) -> None:
        self.trigger_event(
            self.Completed,
            run_id=str(run_id),
            attempt=attempt,
            actor=actor,
            result=result,
            result_kept=kept,
        )

    class Failed(Aggregate.Event):
        run_id: str
        attempt: int
        actor: str
        error_class: str
        message: str
        outcome_known: bool

        def apply(self, effect: Effect) -> None:
            known = self.outcome_known or effect.honours_keys
            effect.state = FAILED if known else UNCERTAIN
            effect.outcome_known = self.outcome_known
            effect.error = f"{self.error_class}: {self.message}"

    def fail(
        self,
        run_id: UUID,
        attempt: int,
        actor: str,
        error: BaseException,
        *,
        outcome_known: bool,
        message: str | None = None,
    ) -> None:
        """Records the call's failure; `message`, when given, is the error's
        message as it may be recorded (redacted)."""
        self.trigger_event(
            self.Failed,
            run_id=str(run_id),
            attempt=attempt,
            actor=actor,
            error_class=type(error).__name__,
            message=(str(error) if message is None else message)[:500],
            outcome_known=outcome_known,
        )

    class Repeated(Aggregate.Event):
        """Called again with the same key; `after` says why."""

        attempt: int
        actor: str
        run_id: str
        after: str

        def apply(self, effect: Effect) -> None:
            effect.state = INTENDED
            effect.attempt = self.attempt
            effect.calls += 1
            effect.repeats[self.after] = effect.repeats.get(self.after, 0) + 1

    def repeat(self, run_id: UUID, attempt: int, actor: str, after: str) -> None:
        self.trigger_event(
            self.Repeated, run_id=str(run_id), attempt=attempt, actor=actor, after=after
        )

    class Held(Aggregate.Event):
        """Found with no outcome, on a downstream that does not honour keys:
        not called again; it waits for an operator."""

        attempt: int
        actor: str
        run_id: str
        why: str

        def apply(self, effect: Effect) -> None:
            effect.state = UNCERTAIN

    def hold(self, run_id: UUID, attempt: int, actor: str, why: str) -> None:
        self.trigger_event(
            self.Held, run_id=str(run_id), attempt=attempt, actor=actor, why=why
        )

    class Confirmed(Aggregate.Event):
        """An operator checked the downstream: the effect happened. Its
        result is unknown: a handler that reaches it again gets None."""

        by: str
        reason: str

        def apply(self, effect: Effect) -> None:
            effect.state = COMPLETED
            effect.result = None
            effect.decided = f"confirmed by {self.by}"

    class Released(Aggregate.Event):
        """An operator checked the downstream: the effect did not happen, so
        the job calls it again when it next reaches it."""

        by: str
        reason: str

        def apply(self, effect: Effect) -> None:
            effect.state = RELEASED
            effect.decided = f"retried by {self.by}"

    def decide(self, done: bool, by: str, reason: str) -> None:
        """Records an operator's decision on an uncertain effect."""
        if self.state != UNCERTAIN:
            earlier = f" ({self.decided})" if self.decided else ""
            raise EffectDecisionRefused(
                f"effect {self.id} is {self.state}{earlier}, not uncertain: only an "
                "uncertain effect waits for a decision; `ledger effects "
                f"show {self.id}` tells its story"
            )
        event = self.Confirmed if done else self.Released
        self.trigger_event(event, by=by, reason=readable_reason(reason)[:500])
