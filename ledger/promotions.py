"""Promoting quarantined records: one code path for the CLI and the API.

A promotion finds the record (an id or a unique prefix), checks it on the
run as stored, hands it to the run's own job (`ledger.promotion` for a
file job's record; for a consumer's message, the Kafka adapter the caller
passes in as `open_messages`, since the ledger never imports the
consumers package), and records what the job's code made of it as
`RecordPromoted`, checked again on the run as it then stands.

The job writes before the outcome is recorded. Writes are replay-safe
by the job contract, so a crash in between only means the record is
still pending and can be promoted again. A refused promotion appends
nothing; one refused after the job's code ran says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ledger.config import LedgerLocation
from ledger.controls import ControlRefused
from ledger.effects import promotion_effects
from ledger.errors import LedgerError
from ledger.operations import (
    BulkResult,
    RecordDecision,
    RunKeptChanging,
    select_for_bulk,
)
from ledger.quarantine import FAILED, REJECTED, WRITTEN, outcome_words

if TYPE_CHECKING:
    from ledger.effects import EffectsFor
    from ledger.promotion import MessagePromotionOpener, Promoter
    from ledger.quarantine import PromotionResult
    from ledger.run import Run
    from ledger.store import Ledger
    from projections.quarantine import QuarantinedRecord
    from projections.views import RunView

__all__ = ["BulkPromotion", "PromotionDecision", "promote_record", "promote_records"]

# How many times an outcome is re-checked against a run that its worker
# (or another operator) keeps moving; each try reloads the run.
_RECORD_TRIES = 5


@dataclass(frozen=True)
class PromotionDecision(RecordDecision):
    """A promotion and its outcome: `written`, `rejected` (quarantined
    again as `requarantined_as`) or `failed` (still pending)."""

    promotion: int = 0
    outcome: str = ""
    step: str = ""
    written: int = 0
    error_class: str | None = None
    detail: str = ""
    requarantined_as: str | None = None


@dataclass(frozen=True)
class BulkPromotion(BulkResult):
    """A bulk promotion; `results` holds each promotion's decision."""

    results: list[dict[str, Any]] = field(default_factory=list)


def promote_record(
    location: LedgerLocation,
    quarantine_ref: str,
    *,
    by: str,
    reason: str = "",
    bootstrap_servers: str | None = None,
    open_messages: MessagePromotionOpener | None = None,
) -> PromotionDecision:
    """Promotes one pending record (an id or a unique prefix of 4 or more)."""
    from ledger.operations import show_record
    from projections.access import catch_up_quietly

    found = show_record(location, quarantine_ref)

    def refuse(record: QuarantinedRecord, refusal: LedgerError) -> None:
        raise refusal

    decisions = _promote_in_run(
        location,
        found.run_id,
        [found],
        by=by,
        reason=reason,
        bootstrap_servers=bootstrap_servers,
        open_messages=open_messages,
        on_refusal=refuse,
    )
    catch_up_quietly(location)
    return decisions[0]


def promote_records(
    location: LedgerLocation,
    *,
    by: str,
    reason: str = "",
    job: str | None = None,
    run_ref: str | None = None,
    quarantine_reason: str | None = None,
    since: str | None = None,
    until: str | None = None,
    dry_run: bool = False,
    quarantine_ids: Collection[str] | None = None,
    bootstrap_servers: str | None = None,
    open_messages: MessagePromotionOpener | None = None,
) -> BulkPromotion:
    """Promotes every pending record that matches the filter, each on its
    own, its run's job opened once; a dry run only selects them.

    The filters are those of `ledger.operations.discard_records`, and
    `quarantine_ids` narrows the selection to records already shown to
    someone, so that a confirmed count is the count acted on.
    """
    from projections.access import catch_up_quietly

    matched, result = select_for_bulk(
        location, BulkPromotion, "promote", by=by,
        reason=reason.strip() or "promoted", dry_run=dry_run, job=job,
        run_ref=run_ref, quarantine_reason=quarantine_reason, since=since,
        until=until, quarantine_ids=quarantine_ids,
    )  # fmt: skip
    if dry_run or not matched:
        return result

    # Each run's records, its job opened once; a refusal skips one record.
    skipped: list[dict[str, str]] = []

    def skip(record: QuarantinedRecord, refusal: LedgerError) -> None:
        skipped.append(
            {
                "quarantine_id": record.quarantine_id,
                "run_id": record.run_id,
                "why": str(refusal),
            }
        )

    by_run: dict[str, list[QuarantinedRecord]] = {}
    for record in matched:
        by_run.setdefault(record.run_id, []).append(record)
    decisions: list[PromotionDecision] = []
    for run_id, records in by_run.items():
        decisions += _promote_in_run(
            location,
            run_id,
            records,
            by=by,
            reason=reason,
            bootstrap_servers=bootstrap_servers,
            open_messages=open_messages,
            on_refusal=skip,
        )
    catch_up_quietly(location)

    outcomes = Counter(decision.outcome for decision in decisions)
    message = (
        f"{len(decisions):,} of the {len(matched):,} matching records promoted "
        f"by {by}: {outcomes[WRITTEN]:,} written, {outcomes[REJECTED]:,} "
        f"rejected again, {outcomes[FAILED]:,} failed"
    )
    if skipped:
        message += f"; {len(skipped):,} left pending, for one: {skipped[0]['why']}"
    return replace(
        result,
        decided=[decision.quarantine_id for decision in decisions],
        skipped=skipped,
        message=message,
        results=[decision.as_dict() for decision in decisions],
    )


def _promote_in_run(
    location: LedgerLocation,
    run_id: str,
    records: list[QuarantinedRecord],
    *,
    by: str,
    reason: str,
    bootstrap_servers: str | None,
    open_messages: MessagePromotionOpener | None,
    on_refusal: Callable[[QuarantinedRecord, LedgerError], None],
) -> list[PromotionDecision]:
    """Promotes records of one run, in order; `on_refusal` is told of each
    record refused (and may raise)."""
    from ledger.policy import use_ledger_policy
    from ledger.quarantine import check_promotable
    from ledger.sealed_payloads import SealedPayloads
    from ledger.store import opened
    from projections.access import read
    from projections.views import find_run

    view = read(location, lambda db: find_run(db, run_id))
    decisions: list[PromotionDecision] = []
    promoter: Promoter | None = None
    with opened(location) as ledger:
        use_ledger_policy(ledger)
        try:
            for index, record in enumerate(records):
                try:
                    # Checked before the job's code runs, and again after.
                    run: Run = ledger.repository.get(UUID(run_id))
                    check_promotable(run, record.quarantine_id)
                    if promoter is None:
                        effects_for = promotion_effects(ledger, UUID(run_id), by)
                        promoter = _open(
                            location,
                            view,
                            bootstrap_servers,
                            open_messages,
                            effects_for,
                        )
                    result = promoter.promote(run, record, SealedPayloads(ledger))
                except _CannotOpen as failure:
                    # The run's job cannot be opened: none of its records can.
                    for left in records[index:]:
                        on_refusal(left, failure.error)
                    break
                except LedgerError as refusal:
                    on_refusal(record, refusal)
                    continue
                try:
                    decision = _record_outcome(ledger, view, record, by, reason, result)
                except LedgerError as refusal:
                    on_refusal(record, refusal)
                    continue
                decisions.append(decision)
        finally:
            if promoter is not None:
                promoter.close()
    return decisions


class _CannotOpen(Exception):
    """Why a run's job could not be opened for its promotions."""

    def __init__(self, error: LedgerError) -> None:
        super().__init__(str(error))
        self.error = error


def _open(
    location: LedgerLocation,
    view: RunView,
    bootstrap_servers: str | None,
    open_messages: MessagePromotionOpener | None,
    effects_for: EffectsFor,
) -> Promoter:
    from ledger.promotion import open_file_promotion

    try:
        if view.consumer is None:
            return open_file_promotion(location, view, effects_for)
        if open_messages is None:
            raise ControlRefused(
                f"run {view.run_id} is a Kafka consumer's run: its messages are "
                "promoted through the Kafka adapter; use `ledger quarantine "
                "promote`"
            )
        return open_messages(view, bootstrap_servers, effects_for)
    except LedgerError as error:
        raise _CannotOpen(error) from error


def _record_outcome(
    ledger: Ledger,
    view: RunView,
    record: QuarantinedRecord,
    by: str,
    reason: str,
    result: PromotionResult,
) -> PromotionDecision:
    """Records the outcome on the run as stored, re-checked on each try."""
    from ledger.quarantine import promote
    from ledger.sealing import seal_payloads
    from ledger.store import IntegrityError

    # A record rejected again is kept whole too, sealed under its new id
    # before the event that names it is saved.
    def seal(new_id: str, whole: Any) -> dict[str, str] | None:
        return seal_payloads(ledger, view.run_id, {new_id: whole}).get(new_id)

    quarantine_id = record.quarantine_id
    for _ in range(_RECORD_TRIES):
        run: Run = ledger.repository.get(UUID(view.run_id))
        try:
            new_id = promote(run, quarantine_id, by, reason, result, seal)
        except ControlRefused as refusal:
            words = outcome_words(
                result.outcome, result.step, result.error_class, result.detail, None
            )
            raise ControlRefused(
                f"{refusal}; the job's code had already handled the record "
                f"({words}), which is not recorded: its output is "
                "replay-safe, so promote it again once the refusal is resolved"
            ) from refusal
        try:
            ledger.save(run)
        except IntegrityError:
            continue
        break
    else:
        raise RunKeptChanging(view.run_id)

    words = outcome_words(
        result.outcome, result.step, result.error_class, result.detail, new_id
    )
    promotion = run.quarantine_promotions[quarantine_id]
    shown_reason = reason.strip()[:500] or "promoted"
    return PromotionDecision(
        run_id=view.run_id,
        action="promote",
        by=by,
        reason=shown_reason,
        message=(
            f"record {quarantine_id[:8]} of run {view.run_id[:8]} ({_where(record)}, "
            f"{record.reason}) promoted by {by} (promotion {promotion}): {words}"
        ),
        quarantine_id=quarantine_id,
        promotion=promotion,
        outcome=result.outcome,
        step=result.step,
        written=result.written,
        error_class=result.error_class,
        detail=result.detail[:500],
        requarantined_as=new_id,
    )


def _where(record: QuarantinedRecord) -> str:
    if record.topic is not None:
        return f"{record.topic}[{record.partition}]@{record.offset}"
    return f"step {record.step}, record {record.record:,}"
