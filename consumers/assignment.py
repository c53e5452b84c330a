"""Where an assigned partition resumes, and what to say about it.

The ledger decides; Kafka's committed offset is only compared with it, and
the partition's log is checked to still hold the position.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.errors import LedgerError

__all__ = ["Placement", "PositionPastLogEnd", "choose_start", "place_partition"]


class PositionPastLogEnd(LedgerError):
    """A partition's recorded position is past the end of its log."""

    def __init__(self, partition: str, position: int, end: int) -> None:
        super().__init__(
            f"{partition}: the ledger's position {position:,} is past the end of "
            f"the partition's log ({end:,}): the topic was deleted and made "
            "again, or truncated; positions never move back, so consume the "
            "new topic with a new group_id"
        )
        self.partition = partition
        self.position = position
        self.end = end


def choose_start(
    ledger_position: int | None, kafka_position: int | None
) -> tuple[int, str, str] | None:
    """Where a partition resumes, who said so, and how the other compared.

    `behind` means the process died between the ledger's transaction and
    Kafka's commit, `ahead` that the group was moved outside the ledger.
    With no ledger position, Kafka's committed offset is used; with
    neither, None: the job's reset policy decides.
    """
    if ledger_position is not None:
        if kafka_position is None or kafka_position < ledger_position:
            return ledger_position, "ledger", "behind"
        if kafka_position > ledger_position:
            return ledger_position, "ledger", "ahead"
        return ledger_position, "ledger", "none"
    if kafka_position is not None:
        return kafka_position, "kafka", "none"
    return None


@dataclass(frozen=True)
class Placement:
    """One partition's start, as recorded in `PartitionsAssigned`."""

    partition: str
    start: int
    source: str
    ledger: int | None
    kafka: int | None
    divergence: str

    def as_dict(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "start": self.start,
            "source": self.source,
            "ledger": self.ledger,
            "kafka": self.kafka,
            "divergence": self.divergence,
        }


def place_partition(
    partition: str,
    ledger_position: int | None,
    kafka_position: int | None,
    *,
    first: int,
    end: int,
    reset_to_end: bool,
) -> Placement:
    """The partition's start given the ledger, Kafka and its log's bounds.

    Raises PositionPastLogEnd when the position is past the log's end: the
    topic was made again (or truncated), resuming would skip the new
    messages, and positions never move back. A position before the log's
    start means retention deleted messages no one read: they are lost to
    every consumer; the placement says `truncated` and starts at `first`.
    """
    chosen = choose_start(ledger_position, kafka_position)
    if chosen is None:
        chosen = (end if reset_to_end else first, "reset", "none")
    start, source, divergence = chosen
    if start > end:
        raise PositionPastLogEnd(partition, start, end)
    if start < first:
        start, divergence = first, "truncated"
    return Placement(
        partition, start, source, ledger_position, kafka_position, divergence
    )
