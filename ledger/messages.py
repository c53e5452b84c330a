"""A consumer run's facts: partitions it owns and message batches it handles.

A Kafka consumer is a job whose one step, `consume`, never runs out of
input. Its run records, besides the usual attempts and outcomes:

- which partitions it was given, where each one resumes, and whether
  Kafka's committed offset agreed with the ledger (`PartitionsAssigned`);
- which partitions it gave up, and how far it had got (`PartitionsRevoked`);
- each batch before it is handled, with the offsets it holds
  (`MessagesStarted`), and after it is written, with the next offset to
  read of every partition it covers (`MessagesCheckpointed`); the store
  writes those positions in the same transaction;
- every message put in quarantine (`MessageQuarantined`);
- a batch whose positions another consumer had recorded first
  (`MessagesSuperseded`): the late worker's checkpoint was refused.

A batch that started and never ended in a checkpoint was interrupted by a
crash. Its offsets are remembered as crash ranges: its messages are then
handled one batch each, so that the message that kills the process is
found, and once it crashed the worker while handled alone as often as the
policy allows, it is quarantined instead of tried again.

Offsets are always "the next offset to read" when they name a position,
and the offset of a message when they name a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from ledger.checkpoint import Checkpoint
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.run import Run

__all__ = [
    "CONSUME_STEP",
    "MessageQuarantined",
    "MessagesCheckpointed",
    "MessagesStarted",
    "MessagesSuperseded",
    "OffsetConventionError",
    "PartitionsAssigned",
    "PartitionsRevoked",
    "crash_count",
    "crashed_alone",
    "message_quarantine_id",
    "partition_key",
]

CONSUME_STEP = "consume"

_QUARANTINE_NAMESPACE = uuid5(NAMESPACE_URL, "recovery-ledger:message-quarantine")


class OffsetConventionError(LedgerError):
    """A position that is not "the next offset to read"."""


def partition_key(topic: str, partition: int) -> str:
    """How a partition is named in events and on screen: `topic[3]`."""
    return f"{topic}[{partition}]"


def message_quarantine_id(group: str, topic: str, partition: int, offset: int) -> str:
    """The same message quarantined again, by any member, keeps its id."""
    return str(uuid5(_QUARANTINE_NAMESPACE, f"{group}:{topic}:{partition}:{offset}"))


def crashed_alone(run: Run, topic: str, partition: int, offset: int) -> int:
    """How many crashed batches held this message and nothing else: crashes
    that were the message's doing, not its neighbours' or a stray kill of
    a whole batch."""
    key = partition_key(topic, partition)
    return sum(
        1
        for crashed in run.crashed_ranges
        if crashed["partition"] == key and crashed["first"] == crashed["last"] == offset
    )


def crash_count(run: Run, topic: str, partition: int, offset: int) -> int:
    """How many crashed batches of this run held the message."""
    key = partition_key(topic, partition)
    return sum(
        1
        for crashed in run.crashed_ranges
        if crashed["partition"] == key and crashed["first"] <= offset <= crashed["last"]
    )


def _check_next_offsets(ranges: list[dict[str, Any]]) -> None:
    """Every checkpointed partition resumes after its last message: at the
    next offset, or further when the log skips offsets there (transaction
    markers, compaction)."""
    for item in ranges:
        if item["next"] <= item["last"]:
            raise OffsetConventionError(
                f"{item['partition']}: position {item['next']} after last "
                f"offset {item['last']}; positions mean the next offset to "
                f"read, which is {item['last'] + 1} (or more past a gap)"
            )


class PartitionsAssigned(Aggregate.Event):
    """Partitions given to this run, each with where it resumes.

    Each item: partition, start (next offset to read), source (`ledger`,
    `kafka` or `reset`), ledger and kafka (their positions, or None) and
    divergence (`none`, `behind`: the process died between the ledger's
    transaction and Kafka's commit; `ahead`: the group was moved outside
    the ledger; `truncated`: the log lost messages nobody read, and start
    is its first offset; `past-end`: the log ends before the position).
    """

    attempt: int
    group: str
    partitions: list[dict[str, Any]]

    def apply(self, run: Run) -> None:
        for item in self.partitions:
            run.partitions[item["partition"]] = item["start"]


class PartitionsRevoked(Aggregate.Event):
    """Partitions taken from this run; each item names where it had got."""

    attempt: int
    partitions: list[dict[str, Any]]

    def apply(self, run: Run) -> None:
        revoked = {item["partition"] for item in self.partitions}
        for key in revoked:
            run.partitions.pop(key, None)

        # Unfinished work on a revoked partition is the next owner's, not a
        # crash suspect of this run.
        if run.open_batch is not None:
            ranges = [
                r for r in run.open_batch["ranges"] if r["partition"] not in revoked
            ]
            run.open_batch = {**run.open_batch, "ranges": ranges}


class MessagesStarted(Aggregate.Event):
    """A batch about to be handled: per partition, its first and last offset."""

    attempt: int
    batch: int
    ranges: list[dict[str, Any]]
    lease_until: str

    def apply(self, run: Run) -> None:
        run.open_batch = {"batch": self.batch, "ranges": self.ranges}
        run.lease_until = self.lease_until


class MessageQuarantined(Aggregate.Event):
    """A message set aside, so that its partition moves on.

    `payload` is a preview (redacted, cut); `sealed` the whole Kafka record
    (key, value, headers, timestamp), encrypted (see ledger.sealing), or
    None. Version 1 had no `sealed`.
    """

    class_version = 2

    attempt: int
    batch: int
    topic: str
    partition: int
    offset: int
    quarantine_id: str
    reason: str
    error_class: str
    detail: str
    tries: int
    crashes: int
    copied_to: str | None
    payload: Any
    sealed: dict[str, str] | None

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["sealed"] = None

    def apply(self, run: Run) -> None:
        if self.sealed is not None:
            run.sealed_payloads[self.quarantine_id] = self.originator_version

        # A replayed batch (a crash, a rerun) quarantines the record again
        # under the same id: it is counted once, and a decision already
        # taken about it stands.
        if self.quarantine_id in run.quarantine_states:
            return
        run.quarantine_states[self.quarantine_id] = "pending"
        run.quarantined += 1
        by_reason = run.quarantined_by_reason
        by_reason[self.reason] = by_reason.get(self.reason, 0) + 1


class MessagesCheckpointed(Aggregate.Event):
    """A handled and written batch; its positions committed with it.

    Each range: partition, first and last offset handled, next (the next
    offset to read) and lag (messages left behind it when it was fetched).
    `first_message`..`last_message` number the run's messages from 1, like
    a file job's records, so that the run has one position that only grows
    (the count of messages checkpointed), like any other job.
    """

    attempt: int
    batch: int
    ranges: list[dict[str, Any]]
    first_message: int
    last_message: int
    records: int
    written: int
    quarantined: int
    counters: dict[str, int]
    lease_until: str

    def apply(self, run: Run) -> None:
        run.open_batch = None
        run.lease_until = self.lease_until
        run.checkpoints[CONSUME_STEP] = Checkpoint(
            step=CONSUME_STEP,
            batch=self.batch,
            first_record=self.first_message,
            last_record=self.last_message,
            position=self.last_message,
        )
        run.batches_done[CONSUME_STEP] = self.batch + 1
        for item in self.ranges:
            run.partitions[item["partition"]] = item["next"]

        # Crash ranges behind every partition's position can never be read
        # again by this run: forget them.
        run.crashed_ranges = [
            crashed
            for crashed in run.crashed_ranges
            if crashed["last"] >= run.partitions.get(crashed["partition"], 0)
        ]
        tallies = {
            f"{CONSUME_STEP}.records": self.records,
            f"{CONSUME_STEP}.written": self.written,
            **self.counters,
        }
        for name, count in tallies.items():
            run.totals[name] = run.totals.get(name, 0) + count


class MessagesSuperseded(Aggregate.Event):
    """A batch whose checkpoint was refused on some partitions.

    Each item: partition, next (the position this run tried to record) and
    recorded (the position another consumer had recorded first). The
    batch's work on those partitions counts for nothing; their current
    owner has it, or will do it again.
    """

    attempt: int
    batch: int
    partitions: list[dict[str, Any]]

    def apply(self, run: Run) -> None:
        run.open_batch = None
        done = run.batches_done.get(CONSUME_STEP, 0)
        run.batches_done[CONSUME_STEP] = max(done, self.batch + 1)
        for item in self.partitions:
            run.partitions.pop(item["partition"], None)


def start_messages(
    run: Run, attempt: int, ranges: list[dict[str, Any]], lease_until: str
) -> int:
    """Records a batch about to be handled; returns its number."""
    run.require_open_attempt(attempt)
    batch = run.batches_done.get(CONSUME_STEP, 0)
    run.trigger_event(
        MessagesStarted,
        attempt=attempt,
        batch=batch,
        ranges=ranges,
        lease_until=lease_until,
    )
    return batch


def checkpoint_messages(
    run: Run,
    *,
    attempt: int,
    batch: int,
    ranges: list[dict[str, Any]],
    records: int,
    written: int,
    quarantined: int,
    counters: dict[str, int],
    lease_until: str,
) -> None:
    """Records a batch as done; the caller saves it with its positions.

    `records` counts the messages handled, which is less than the offsets
    the ranges span when the log has gaps.
    """
    run.require_open_attempt(attempt)
    _check_next_offsets(ranges)
    first = run.totals.get(f"{CONSUME_STEP}.records", 0) + 1
    run.trigger_event(
        MessagesCheckpointed,
        attempt=attempt,
        batch=batch,
        ranges=ranges,
        first_message=first,
        last_message=first + records - 1,
        records=records,
        written=written,
        quarantined=quarantined,
        counters=counters,
        lease_until=lease_until,
    )


def quarantine_message(
    run: Run,
    *,
    attempt: int,
    batch: int,
    group: str,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    error_class: str,
    detail: str,
    tries: int,
    crashes: int,
    copied_to: str | None,
    payload: Any,
    sealed: dict[str, str] | None = None,
) -> UUID:
    run.require_open_attempt(attempt)
    quarantine_id = message_quarantine_id(group, topic, partition, offset)
    run.trigger_event(
        MessageQuarantined,
        attempt=attempt,
        batch=batch,
        topic=topic,
        partition=partition,
        offset=offset,
        quarantine_id=quarantine_id,
        reason=reason,
        error_class=error_class,
        detail=detail,
        tries=tries,
        crashes=crashes,
        copied_to=copied_to,
        payload=payload,
        sealed=sealed,
    )
    return UUID(quarantine_id)


def assign_partitions(
    run: Run, attempt: int, group: str, partitions: list[dict[str, Any]]
) -> None:
    run.require_open_attempt(attempt)
    run.trigger_event(
        PartitionsAssigned, attempt=attempt, group=group, partitions=partitions
    )


def revoke_partitions(run: Run, attempt: int, partitions: list[dict[str, Any]]) -> None:
    run.require_open_attempt(attempt)
    run.trigger_event(PartitionsRevoked, attempt=attempt, partitions=partitions)


def supersede_messages(
    run: Run, attempt: int, batch: int, partitions: list[dict[str, Any]]
) -> None:
    run.require_open_attempt(attempt)
    run.trigger_event(
        MessagesSuperseded, attempt=attempt, batch=batch, partitions=partitions
    )
