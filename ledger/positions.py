"""Source positions saved with checkpoints, in the same transaction.

A position is the next offset to read from one source partition (for
Kafka: group, topic and partition), stored as one of the `eventsourcing`
library's tracking records. Saving a checkpoint with the positions it
covers is atomic: the store refuses a position that does not move forward,
and with it every event of that save, so a worker that lost a partition to
another (an older generation) cannot move it backwards or record a batch
twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import IntegrityError, PersistenceError, Tracking

from ledger.errors import LedgerError, LedgerUnavailable
from ledger.store import Ledger

__all__ = ["PositionRefused", "SourcePosition", "load_positions", "save_with_positions"]

_PREFIX = "source"


@dataclass(frozen=True, order=True)
class SourcePosition:
    """One partition of one source, as a group reads it."""

    group: str
    topic: str
    partition: int

    def __post_init__(self) -> None:
        # The group leads the stored name, so it may not hold the separator.
        if ":" in self.group or not self.group:
            raise LedgerError(
                f"group id {self.group!r} must be non-empty and hold no ':'; "
                "rename the consumer group"
            )
        if self.partition < 0:
            raise LedgerError(f"partition {self.partition} must be 0 or more")

    @property
    def name(self) -> str:
        return f"{_PREFIX}:{self.group}:{self.topic}:{self.partition}"

    @classmethod
    def from_name(cls, name: str) -> SourcePosition:
        _, group, rest = name.split(":", 2)
        topic, partition = rest.rsplit(":", 1)
        return cls(group=group, topic=topic, partition=int(partition))


class PositionRefused(LedgerError):
    """A save whose positions did not all move forward; nothing was saved."""

    def __init__(self, positions: Mapping[SourcePosition, int]) -> None:
        named = ", ".join(
            f"{p.topic}[{p.partition}]->{offset}"
            for p, offset in sorted(positions.items())
        )
        super().__init__(
            f"positions {named} do not all move past the recorded ones: another "
            "consumer checkpointed these partitions first; this batch was not "
            "recorded and must be left to the partitions' current owner"
        )
        self.positions = dict(positions)


def save_with_positions(
    ledger: Ledger, aggregate: Any, positions: Mapping[SourcePosition, int]
) -> None:
    """Saves the aggregate's pending events and the positions, atomically.

    Positions mean "next offset to read", everywhere. After PositionRefused
    or LedgerUnavailable the aggregate's pending events are gone and its
    state is ahead of the store: load it again before going on.
    """
    trackings = [
        Tracking(application_name=position.name, notification_id=offset)
        for position, offset in sorted(positions.items())
    ]
    try:
        ledger.save(aggregate, trackings=trackings)
    except IntegrityError as error:
        raise PositionRefused(positions) from error
    except PersistenceError as error:
        raise LedgerUnavailable("the ledger", str(error).splitlines()[0]) from error


def load_positions(ledger: Ledger, group: str) -> dict[SourcePosition, int]:
    """Every position the group has recorded: the next offset to read."""
    found = ledger.positions(f"{_PREFIX}:{group}:")
    return {SourcePosition.from_name(name): offset for name, offset in found.items()}
