"""Effects for operators: list a run's effects, decide an uncertain one.

One code path for the CLI and the HTTP API. An uncertain effect is one the
ledger cannot know happened, on a downstream that would apply a repeat: it
waits for one decision. `confirm` records that it happened; `retry` that
it did not, so it is called again. Either way the record that waits in
quarantine for it is then promoted at once: the job's code runs again,
and the effect returns without a call (confirmed) or is called again with
the same key (retried). Deciding is the one step an operator takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ledger.config import LedgerLocation
from ledger.controls import ControlRefused, readable_reason
from ledger.operations import ControlResult

if TYPE_CHECKING:
    from ledger.promotion import MessagePromotionOpener
    from projections.database import ReadDatabase
    from projections.effects import EffectListing, EffectRow
    from projections.views import RunView

__all__ = [
    "EffectDecision",
    "decide_effect",
    "list_effects",
    "show_effect",
]


@dataclass(frozen=True)
class EffectDecision(ControlResult):
    """An operator's decision on an uncertain effect (`action` is `confirm`
    or `retry`), and the promotion of the record waiting for it."""

    key: str = ""

    # The quarantined record promoted after the decision, and how it went.
    promoted: dict[str, Any] | None = field(default=None)


def list_effects(
    location: LedgerLocation, run_ref: str, state: str | None = None
) -> EffectListing:
    """The effects the run made or repeated; `state` narrows them."""
    from projections.access import read
    from projections.effects import read_effects

    return read(location, lambda db: read_effects(db, run_ref, state))


def show_effect(location: LedgerLocation, key_ref: str) -> EffectRow:
    """One effect by key or unique prefix of 4 or more."""
    from projections.access import read
    from projections.effects import find_effect

    async def query(db: ReadDatabase) -> EffectRow:
        return await find_effect(db, key_ref)

    return read(location, query)


def decide_effect(
    location: LedgerLocation,
    key_ref: str,
    *,
    done: bool,
    by: str,
    reason: str,
    bootstrap_servers: str | None = None,
    open_messages: MessagePromotionOpener | None = None,
) -> EffectDecision:
    """Records the decision on an uncertain effect, then promotes the record
    that waits in quarantine for it, if one does.

    An effect already decided whose record still waits (its promotion was
    refused then, a live worker held the run) is not decided again: its
    record is promoted. An effect whose record a live worker still holds
    in a batch is refused: the record is quarantined when that batch is
    checkpointed, and the decision is taken then.
    """
    from ledger.effect import COMPLETED, RELEASED, UNCERTAIN
    from ledger.promotions import promote_record

    reason = readable_reason(reason)
    found, waiting, view = _situation(location, key_ref)
    decision = "confirmed" if done else "retried"
    earlier = found.decision if found.state in (COMPLETED, RELEASED) else None
    if earlier is not None and waiting is not None:
        what = (
            f"was already {'confirmed' if found.state == COMPLETED else 'retried'} "
            f"by {earlier['by']}; {by} promotes its record"
        )
    else:
        if found.state == UNCERTAIN and waiting is None and view.worker_alive:
            raise ControlRefused(
                f"effect {found.key} is uncertain, and the worker of run "
                f"{view.run_id[:8]} still has its record in a batch: the record "
                "is quarantined when that batch is checkpointed; decide then "
                f"(`ledger quarantine list --run {view.run_id[:8]}`)"
            )
        _record_decision(location, found.key, done, by, reason)
        what = (
            f"confirmed by {by}: recorded as done, never called again"
            if done
            else f"retried by {by}: recorded as not done, to be called again with "
            "the same key"
        )

    # The record that waits for it goes back through the job at once.
    promoted = None
    if waiting is None:
        then = _what_reaches_it(view, found, done)
    else:
        try:
            outcome = promote_record(
                location,
                waiting,
                by=by,
                reason=f"effect {decision}: {reason}",
                bootstrap_servers=bootstrap_servers,
                open_messages=open_messages,
            )
        except ControlRefused as refusal:
            # The decision stands; the record waits for what the refusal
            # names (a live worker, another uncertain effect of the record);
            # the same command promotes it later.
            then = (
                f"record {waiting[:8]} stays in quarantine: {refusal}; once "
                f"that is resolved, the same command promotes it"
            )
        else:
            promoted = outcome.as_dict()
            then = outcome.message
    return EffectDecision(
        key=found.key,
        run_id=found.last_run_id,
        action="confirm" if done else "retry",
        by=by,
        reason=reason,
        message=f"effect {found.name} ({found.key[:8]}, {found.where}) {what}; {then}",
        promoted=promoted,
    )


def _situation(
    location: LedgerLocation, key_ref: str
) -> tuple[EffectRow, str | None, RunView]:
    """In one read: the effect, the pending quarantined record held for it
    (if any), and the run that last touched it."""
    from projections.access import read
    from projections.effects import find_effect
    from projections.quarantine import select_pending
    from projections.views import find_run

    async def query(db: ReadDatabase) -> tuple[EffectRow, str | None, RunView]:
        effect = await find_effect(db, key_ref)
        waiting = None
        for run_id in dict.fromkeys((effect.last_run_id, effect.run_id)):
            pending = await select_pending(db, run_id=run_id, reason="effect-uncertain")
            waiting = next(
                (r.quarantine_id for r in pending if effect.key in r.detail), None
            )
            if waiting is not None:
                break
        return effect, waiting, await find_run(db, effect.last_run_id)

    return read(location, query)


def _record_decision(
    location: LedgerLocation, key: str, done: bool, by: str, reason: str
) -> None:
    """Decides on the stream as stored: a worker may have just recorded an
    outcome, and then there is nothing left to decide."""
    from ledger.effect import Effect
    from ledger.store import IntegrityError, opened

    with opened(location) as ledger:
        for _ in range(3):
            effect: Effect = ledger.repository.get(UUID(key))
            effect.decide(done, by, reason)
            try:
                ledger.save(effect)
                return
            except IntegrityError:
                continue
    raise ControlRefused(
        f"effect {key} kept changing under this decision; run the same command again"
    )


def _what_reaches_it(view: RunView, effect: EffectRow, done: bool) -> str:
    """What happens next to an effect no quarantined record waits for."""
    if done:
        return "no quarantined record waits for it"
    short = view.run_id[:8]
    if view.consumer is not None:
        return (
            "no quarantined record waits for it, and a consumer reads no "
            "message twice: it is called again only if its message is promoted"
        )
    if view.state in ("completed", "stopped", "abandoned"):
        return (
            f"no quarantined record waits for it and run {short} is "
            f"{view.state}: `ledger rerun {short} --from step:{effect.step} "
            "--reason TEXT` reaches it again (effects already done are not "
            "called again)"
        )
    return (
        "no quarantined record waits for it; the run's next attempt (`ledger "
        f"resume {short}`) reaches it"
    )
