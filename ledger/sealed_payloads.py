"""The sealed payloads of quarantined records: sealed, opened, destroyed.

Each record a batch quarantines is sealed (see `ledger.sealing`) before
the transaction that records it, so no event ever names a key that was
never stored. A promotion whose record is no longer in its source opens
the sealed payload its quarantine event holds.

A discard destroys the record's key once the discard is recorded; an
archived run has every key destroyed (`destroy_payload_keys`, defined in
`ledger.sealing`). Both are idempotent, so a crash between the event and
the destruction is finished by discarding the record again or by
`sweep_payload_keys`, which also destroys the keys of batches that never
committed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError

from ledger.errors import LedgerUnavailable
from ledger.payload_keys import KeyTable
from ledger.quarantine import DISCARDED
from ledger.sealing import (
    ALGORITHM,
    destroy_payload_keys,
    open_sealed,
    seal_payloads,
    shown_time,
)

if TYPE_CHECKING:
    from ledger.run import Run
    from ledger.store import Ledger

__all__ = [
    "BatchSeals",
    "PayloadSeal",
    "SealedPayloads",
    "Sweep",
    "Unsealed",
    "destroy_discarded_keys",
    "destroy_payload_keys",
    "seal_batch",
    "seal_state",
    "sweep_payload_keys",
]

# A key no event names is left by a batch that never committed, once no
# commit can still be under way: a sweep leaves younger ones alone.
ORPHAN_AGE = timedelta(hours=1)


class BatchSeals:
    """The sealed payloads of one batch's rejected records, sealed once,
    before the batch's commit, which may be applied again to a run that
    moved on (see `ledger.attempt.commit`).

    A record already discarded is not sealed: a replayed batch must not
    make its payload readable again. One discarded between sealing and
    the commit is recorded without its sealed payload, and its new key is
    destroyed by `settle`.
    """

    def __init__(self, ledger: Ledger, run: Run, payloads: Mapping[str, Any]) -> None:
        self.ledger = ledger
        wanted = {
            quarantine_id: payload
            for quarantine_id, payload in payloads.items()
            if run.quarantine_states.get(quarantine_id) != DISCARDED
        }
        self.sealed = seal_payloads(ledger, run.id, wanted) if wanted else {}

    def get(self, run: Run, quarantine_id: str) -> dict[str, str] | None:
        """What to record as the record's sealed payload on `run`."""
        if run.quarantine_states.get(quarantine_id) == DISCARDED:
            return None
        return self.sealed.get(quarantine_id)

    def settle(self, run: Run) -> None:
        """Destroys the keys of records the saved `run` holds discarded."""
        stale = [q for q in self.sealed if run.quarantine_states.get(q) == DISCARDED]
        if stale:
            destroy_payload_keys(
                self.ledger, run.id, stale, why="its record was discarded"
            )


def seal_batch(ledger: Ledger, run: Run, payloads: Mapping[str, Any]) -> BatchSeals:
    """`BatchSeals` for a file job's worker: an unreachable ledger is
    LedgerUnavailable, as for its saves."""
    try:
        return BatchSeals(ledger, run, payloads)
    except PersistenceError as error:
        raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error


@dataclass(frozen=True)
class Unsealed:
    """A sealed payload, opened."""

    payload: Any


class SealedPayloads:
    """Opens the sealed payloads of a ledger's quarantined records, for
    promotions whose record is no longer in its source."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def open(self, run: Run, quarantine_id: str) -> Unsealed | None:
        """The record's whole payload; None when its quarantine recorded no
        sealed payload (recorded before payloads were sealed, none given,
        or too large). Raises when there is one that cannot be opened."""
        version = run.sealed_payloads.get(quarantine_id)
        if version is None:
            return None
        events = self.ledger.repository.event_store.get(
            run.id, gt=version - 1, lte=version
        )
        sealed = next((getattr(event, "sealed", None) for event in events), None)
        if sealed is None:
            return None
        return Unsealed(open_sealed(self.ledger, run.id, quarantine_id, sealed))


def destroy_discarded_keys(
    ledger: Ledger, run: Run, quarantine_ids: Collection[str]
) -> list[str]:
    """Destroys the sealed payloads' keys of those records the run holds
    discarded, naming each decision; idempotent. Returns the ids whose
    keys were destroyed now."""
    by_why: dict[str, list[str]] = {}
    for quarantine_id in quarantine_ids:
        if run.quarantine_states.get(quarantine_id) != DISCARDED:
            continue
        decision = run.quarantine_decisions.get(quarantine_id, {})
        why = f"discarded by {decision.get('by')}: {decision.get('reason')}"
        by_why.setdefault(why, []).append(quarantine_id)
    destroyed: list[str] = []
    for why, ids in by_why.items():
        destroyed += destroy_payload_keys(ledger, run.id, ids, why=why)
    return destroyed


@dataclass(frozen=True)
class Sweep:
    """What a sweep destroyed: keys of records found discarded (a discard
    interrupted before its key was destroyed), and keys no event names
    (a batch that never committed)."""

    discarded: int
    orphaned: int


def sweep_payload_keys(ledger: Ledger, *, older_than: timedelta = ORPHAN_AGE) -> Sweep:
    """Destroys every key that should no longer be held; idempotent."""
    from ledger.store import AggregateNotFoundError

    cutoff = (datetime.now(UTC) - older_than).isoformat(timespec="microseconds")
    discarded = orphaned = 0
    for run_id, keys in KeyTable(ledger).live_of_runs().items():
        try:
            run: Run | None = ledger.repository.get(UUID(run_id))
        except (AggregateNotFoundError, ValueError):
            run = None
        states = run.quarantine_states if run is not None else {}

        # The run's own word: a discarded record keeps no key.
        gone = {
            key.quarantine_id
            for key in keys
            if states.get(key.quarantine_id) == DISCARDED
        }
        if gone:
            why = "its record was discarded (destroyed by a sweep)"
            discarded += len(destroy_payload_keys(ledger, run_id, gone, why=why))

        # Keys of records the run never quarantined, old enough that no
        # commit that would name them can still be under way.
        unnamed = {
            k.quarantine_id
            for k in keys
            if k.quarantine_id not in states and k.created_at < cutoff
        }
        if unnamed:
            why = "no event names it: its batch never committed"
            orphaned += len(destroy_payload_keys(ledger, run_id, unnamed, why=why))
    return Sweep(discarded=discarded, orphaned=orphaned)


@dataclass(frozen=True)
class PayloadSeal:
    """Whether a record's whole payload is kept sealed, for `show`.

    `state`: `sealed` (a key is held: a promotion can read it), `destroyed`
    (every key was destroyed, when and why), or `none` (no sealed payload:
    quarantined before payloads were sealed, none given, or too large).
    """

    state: str
    wrapped: bool = False
    destroyed_at: str | None = None
    destroyed_why: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def words(self) -> str:
        if self.state == "sealed":
            wrapped = ", its key wrapped by the master key" if self.wrapped else ""
            return f"kept whole, encrypted ({ALGORITHM}{wrapped})"
        if self.state == "destroyed":
            return (
                f"destroyed at {shown_time(self.destroyed_at or '')}: "
                f"{self.destroyed_why}; the whole payload can never be read again"
            )
        return "none kept (only the preview above)"


def seal_state(ledger: Ledger, run_id: str, quarantine_id: str) -> PayloadSeal:
    """What the key table says of the record's sealed payload."""
    keys = KeyTable(ledger).of_record(run_id, quarantine_id)
    held = [key for key in keys if not key.destroyed]
    if held:
        return PayloadSeal("sealed", wrapped=held[-1].wrapped_by is not None)
    if not keys:
        return PayloadSeal("none")
    last = max(keys, key=lambda key: key.destroyed_at or "")
    return PayloadSeal(
        "destroyed", destroyed_at=last.destroyed_at, destroyed_why=last.destroyed_why
    )
