"""A consumer run's events, stored without Kafka, for the schema tests.

Two members of one consumer group are driven through `ConsumerRecorder`,
the ledger side of a consumer, as the Kafka consumer would drive it: each
claims its run and records the partitions it was given; the first
checkpoints a batch with a quarantined message; the second takes one of
its partitions and checkpoints it further first, so that the first
member's next checkpoint of that partition is refused and stored as
superseded; then both give up their partitions and stop cleanly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from consumers.assignment import choose_start
from consumers.batch import Handled, Poison
from consumers.cli import _params as consumer_params
from consumers.job import ConsumerJob, Message
from consumers.recorder import ConsumerRecorder
from ledger.messages import partition_key
from ledger.store import Ledger

__all__ = ["EchoConsumer", "record_consumer_runs"]

TOPIC = "numbers"
FIRST = partition_key(TOPIC, 0)
SECOND = partition_key(TOPIC, 1)


class EchoConsumer(ConsumerJob):
    """A consumer whose output is each message's value."""

    name = "echo-consumer"
    version = "1"
    group_id = "echo"
    topics = (TOPIC,)

    def handle(self, message: Message, counters: Counter[str]) -> Any:
        counters["echoed"] += 1
        return message.value

    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        return len(outputs)


def message(partition: int, offset: int) -> Message:
    return Message(TOPIC, partition, offset, b"k", b'{"n": %d}' % offset)


def assigned(
    partition: int, ledger: int | None, kafka: int | None, reset: int = 0
) -> dict[str, Any]:
    """A partition as the consumer records it on assignment."""
    start, source, divergence = choose_start(ledger, kafka) or (reset, "reset", "none")
    return {
        "partition": partition_key(TOPIC, partition),
        "start": start,
        "source": source,
        "ledger": ledger,
        "kafka": kafka,
        "divergence": divergence,
    }


def handled(done: dict[str, tuple[int, int]], poison: Sequence[Poison] = ()) -> Handled:
    """A batch handled in full: every message of `done` but the poison."""
    result = Handled(done=dict(done), poison=list(poison))
    bad = {(_key(p.message), p.message.offset) for p in poison}
    for key, (first, last) in sorted(done.items()):
        partition = int(key.rpartition("[")[2].rstrip("]"))
        result.counts[key] = last - first + 1
        for offset in range(first, last + 1):
            if (key, offset) not in bad:
                result.outputs.append((message(partition, offset), b"out"))
                result.counters["echoed"] += 1
    return result


def _key(item: Message) -> str:
    return partition_key(item.topic, item.partition)


def ranges(done: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    return [
        {"partition": key, "first": first, "last": last}
        for key, (first, last) in sorted(done.items())
    ]


def record_consumer_runs(ledger: Ledger) -> None:
    """Stores every event a consumer run can store; see the module docstring."""
    job = EchoConsumer()

    # The parameters `ledger consume` records, so that Run.Started is
    # checked in the shape a real consumer run stores.
    params = consumer_params(job, ())
    first = ConsumerRecorder(ledger, job, __name__, "member-a", params)
    second = ConsumerRecorder(ledger, job, __name__, "member-b", params)

    # The first member starts both partitions: one new to everyone, one
    # whose offset only Kafka had committed.
    first.claim()
    first.record_assigned([assigned(0, None, None), assigned(1, None, 0)])

    # Its first batch holds a message the job rejected; it is copied to the
    # quarantine topic and its partition moves on.
    done = {FIRST: (0, 2), SECOND: (0, 1)}
    batch = first.start_batch(ranges(done))
    rejected = Poison(message(0, 1), "rejected", "Reject", "n is odd", 1, 0)
    first.checkpoint(
        batch,
        handled(done, [rejected]),
        written=4,
        copies={(FIRST, 1): f"{TOPIC}.quarantine"},
        highwaters={FIRST: 10, SECOND: None},
    )

    # The group gives partition 0 to the second member, which resumes it
    # at the ledger's position (Kafka's commit was lost) and moves it on.
    second.claim()
    second.record_assigned([assigned(0, first.positions()[FIRST], None)])
    done = {FIRST: (3, 5)}
    batch = second.start_batch(ranges(done))
    second.checkpoint(batch, handled(done), 3, {}, {FIRST: 10})

    # The first member, not yet told, checkpoints both partitions: the one
    # it lost is refused and recorded as superseded, the other moves on.
    # Its quarantined message is not copied anywhere.
    done = {FIRST: (3, 4), SECOND: (2, 3)}
    batch = first.start_batch(ranges(done))
    dropped = Poison(message(1, 2), "handler-error", "ValueError", "bad n", 3, 0)
    result = first.checkpoint(
        batch, handled(done, [dropped]), 3, {}, {FIRST: 10, SECOND: 4}
    )
    assert result.superseded == {FIRST: 6}, result
    assert result.accepted == {SECOND: 4}, result

    # Both stop cleanly, giving up the partitions they still read.
    for member in (first, second):
        owned = sorted(member.current.partitions.items())
        member.record_revoked([{"partition": k, "next": n} for k, n in owned])
        member.complete()
