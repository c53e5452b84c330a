"""Operator decisions about quarantined records, recorded next to the work.

A record a file job rejected (`Run.RecordQuarantined`) or a message a
consumer set aside (`MessageQuarantined`) waits in quarantine until a
person decides what becomes of it. Each decision is an event in the run's
own stream, naming the record, who decided and why, so that the audit
trail holds it beside the quarantine it settles.

The run knows the state of each of its quarantined records
(`Run.quarantine_states`: pending, discarded or promoted), so a decision
is checked against the write side as it stands, never against read
tables that may lag. A refused decision appends nothing.

A discard may land while a worker holds the run: the worker's next
append is refused once, and it applies its facts again on top of the
decision (see `ledger.attempt.commit`). A promotion may not: it runs the
job's own code and writes to the job's output (see `ledger.promotion`),
which must not race the worker writing the same output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import uuid5

from eventsourcing.domain import Aggregate

from ledger.controls import ControlRefused
from ledger.worker import liveness

if TYPE_CHECKING:
    from ledger.run import Run

__all__ = [
    "DISCARDED",
    "FAILED",
    "PENDING",
    "PROMOTED",
    "REJECTED",
    "WRITTEN",
    "PromotionResult",
    "RecordDiscarded",
    "RecordPromoted",
    "RecordRequarantined",
    "Requarantine",
    "Sealer",
    "check_promotable",
    "discard",
    "outcome_words",
    "promote",
]

PENDING = "pending"
DISCARDED = "discarded"
PROMOTED = "promoted"

# What a promotion came to: the job's code wrote the record, rejected it
# again, or raised something else.
WRITTEN = "written"
REJECTED = "rejected"
FAILED = "failed"


class RecordDiscarded(Aggregate.Event):
    """An operator decided a quarantined record will never be processed.

    The record stays in the log, with its reason and payload preview; it
    no longer counts as waiting in quarantine. Once this is recorded, the
    key of its sealed payload is destroyed (see `ledger.operations`).
    """

    quarantine_id: str
    by: str
    reason: str

    def apply(self, run: Run) -> None:
        run.quarantine_states[self.quarantine_id] = DISCARDED
        run.quarantine_decisions[self.quarantine_id] = {
            "by": self.by,
            "reason": self.reason,
            "at": self.timestamp.isoformat(),
        }


def discard(run: Run, quarantine_id: str, by: str, reason: str) -> None:
    """Discards one pending record of the run; refused, appending nothing,
    when there is no reason, no such record, or it was already decided."""
    if not reason.strip():
        raise ControlRefused(
            "a reason is required: pass --reason TEXT saying why the record "
            "will never be processed"
        )

    # The record must be one this run quarantined, and still waiting.
    state, decision = _state_of(run, quarantine_id)
    if state == DISCARDED:
        raise ControlRefused(
            f"record {quarantine_id} is already discarded by "
            f"{decision.get('by', 'an operator')} ({decision.get('reason', '')}); "
            "there is nothing left to decide"
        )
    if state == PROMOTED:
        raise ControlRefused(
            f"record {quarantine_id} was promoted by "
            f"{decision.get('by', 'an operator')} and is back in processing; "
            "only a pending record can be discarded"
        )

    run.trigger_event(
        RecordDiscarded,
        quarantine_id=quarantine_id,
        by=by,
        reason=reason.strip()[:500],
    )


# Seals a record's whole payload under its quarantine id (see
# ledger.sealing); None when it is not sealed.
Sealer = Callable[[str, Any], "dict[str, str] | None"]


@dataclass(frozen=True)
class Requarantine:
    """Where and why a promoted record was rejected again: the new
    quarantined record a rejected promotion adds. A consumer's message
    names its topic, partition and offset too.

    `payload` is the preview to record; `whole` the record itself, which
    is only ever recorded sealed.
    """

    step: str
    batch: int
    record: int
    reason: str
    detail: str
    payload: Any
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    whole: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PromotionResult:
    """What the job's own code made of a promoted record.

    `step` is the step that had the last word: the last one that wrote
    it, or the one that rejected it or raised. `written` counts what the
    steps' writes reported. `detail` is the rejection or the error, in
    words; `requarantine` is set exactly when the outcome is `rejected`.
    """

    outcome: str
    step: str
    written: int = 0
    error_class: str | None = None
    detail: str = ""
    requarantine: Requarantine | None = None


def outcome_words(
    outcome: str,
    step: str,
    error_class: str | None,
    detail: str,
    requarantined_as: str | None,
) -> str:
    """A promotion's outcome as a person reads it."""
    if outcome == WRITTEN:
        return f"written by step {step}"
    if outcome == REJECTED:
        words = f"rejected again by step {step} as {detail}"
        if requarantined_as is not None:
            words += f"; quarantined as {requarantined_as}"
        return words
    return f"failed with {error_class}: {detail} (in step {step})"


class RecordPromoted(Aggregate.Event):
    """An operator put a quarantined record back into processing, and the
    job's own code handled it: a new attempt of that one record.

    `promotion` numbers this record's promotions from 1. `written`: the
    record is in the job's output and settled. `rejected`: settled too,
    and quarantined again as `requarantined_as` (a `RecordRequarantined`
    follows). `failed`: the job's code raised; the record stays pending,
    so it can be promoted again once the cause is fixed.
    """

    quarantine_id: str
    by: str
    reason: str
    promotion: int
    outcome: str
    step: str
    written: int
    error_class: str | None
    detail: str
    requarantined_as: str | None

    def apply(self, run: Run) -> None:
        run.quarantine_promotions[self.quarantine_id] = self.promotion
        if self.outcome == FAILED:
            return
        run.quarantine_states[self.quarantine_id] = PROMOTED
        run.quarantine_decisions[self.quarantine_id] = {
            "by": self.by,
            "reason": self.reason,
            "at": self.timestamp.isoformat(),
        }


class RecordRequarantined(Aggregate.Event):
    """A promoted record the job's code rejected again, quarantined anew,
    pending, with `previous_id` naming the record it was promoted from.

    Its id is a UUID 5 of the run id, the previous id and the promotion's
    number, so the lineage of one source record reads as a chain.
    `payload` is a preview (redacted, cut); `sealed` the whole record,
    encrypted (see ledger.sealing), or None. Version 1 had no `sealed`.
    """

    class_version = 2

    quarantine_id: str
    previous_id: str
    promotion: int
    step: str
    batch: int
    record: int
    reason: str
    detail: str
    payload: Any
    topic: str | None
    partition: int | None
    offset: int | None
    sealed: dict[str, str] | None

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["sealed"] = None

    def apply(self, run: Run) -> None:
        if self.sealed is not None:
            run.sealed_payloads[self.quarantine_id] = self.originator_version
        run.quarantine_states.setdefault(self.quarantine_id, PENDING)


def _state_of(run: Run, quarantine_id: str) -> tuple[str, dict[str, str]]:
    """A record's state and the decision that set it; refused when the run
    never quarantined it."""
    state = run.quarantine_states.get(quarantine_id)
    if state is None:
        raise ControlRefused(
            f"run {run.id} has no quarantined record {quarantine_id}; list its "
            f"records with `ledger quarantine list --run {str(run.id)[:8]} "
            "--state all`"
        )
    return state, run.quarantine_decisions.get(quarantine_id, {})


def check_promotable(run: Run, quarantine_id: str) -> None:
    """Refuses, appending nothing, a promotion that makes no sense: no such
    record, one already decided, or a run a live worker holds."""
    state, decision = _state_of(run, quarantine_id)
    if state == DISCARDED:
        raise ControlRefused(
            f"record {quarantine_id} was discarded by "
            f"{decision.get('by', 'an operator')} ({decision.get('reason', '')}); "
            "a discarded record is never processed again"
        )
    if state == PROMOTED:
        raise ControlRefused(
            f"record {quarantine_id} is already promoted by "
            f"{decision.get('by', 'an operator')} ({decision.get('reason', '')}); "
            "its outcome stands, and when it was rejected again it waits under "
            f"a new id (`ledger quarantine show {quarantine_id[:8]}` names it)"
        )
    _refuse_while_worked_on(run)


def promote(
    run: Run,
    quarantine_id: str,
    by: str,
    reason: str,
    result: PromotionResult,
    seal: Sealer | None = None,
) -> str | None:
    """Records a promotion's outcome; returns the id a record rejected again
    is quarantined under. Checked again here, on the run as it stands.
    `seal` keeps a record rejected again whole, sealed under its new id."""
    check_promotable(run, quarantine_id)
    promotion = run.quarantine_promotions.get(quarantine_id, 0) + 1

    # A rejection is a new quarantined record, named after its lineage.
    again = result.requarantine if result.outcome == REJECTED else None
    new_id = None
    sealed = None
    if again is not None:
        new_id = str(uuid5(run.id, f"{quarantine_id}:promotion:{promotion}"))
        if seal is not None:
            sealed = seal(new_id, again.whole)

    run.trigger_event(
        RecordPromoted,
        quarantine_id=quarantine_id,
        by=by,
        reason=reason.strip()[:500] or "promoted",
        promotion=promotion,
        outcome=result.outcome,
        step=result.step,
        written=result.written,
        error_class=result.error_class,
        detail=result.detail[:500],
        requarantined_as=new_id,
    )
    if again is not None:
        run.trigger_event(
            RecordRequarantined,
            quarantine_id=new_id,
            previous_id=quarantine_id,
            promotion=promotion,
            step=again.step,
            batch=again.batch,
            record=again.record,
            reason=again.reason,
            detail=again.detail[:500],
            payload=again.payload,
            topic=again.topic,
            partition=again.partition,
            offset=again.offset,
            sealed=sealed,
        )
    return new_id


def _refuse_while_worked_on(run: Run) -> None:
    """A promotion runs the job's code and writes to its output, which the
    worker holding the run writes too: it waits until the attempt ends (or
    its worker is found dead)."""
    if not run.attempt_open:
        return
    alive = liveness(run.worker, run.lease_until)
    if alive.alive:
        raise ControlRefused(
            f"run {run.id} is being worked on by attempt {run.attempt} "
            f"({alive.evidence}), and a promotion would write to the job's "
            "output beside it; promote once the attempt ends (a consumer: stop "
            "it cleanly first)"
        )
