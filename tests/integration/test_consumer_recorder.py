"""The ledger side of a Kafka consumer, on SQLite and on PostgreSQL.

`ConsumerRecorder` is driven here as the consumer drives it, without a
broker: members of one group claim their runs, start and checkpoint
batches, and race each other on a partition. What is checked is the
ledger's half of the offset contract: positions are saved with their
checkpoint, never move backwards, always mean "the next offset to read",
and a batch a crash interrupted is remembered by its offsets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from consumers.batch import Handled
from consumers.job import ConsumerJob, Message
from consumers.recorder import Checkpointed, ConsumerRecorder
from ledger.config import parse_ledger_url
from ledger.messages import (
    MessagesSuperseded,
    OffsetConventionError,
    checkpoint_messages,
    crash_count,
    partition_key,
)
from ledger.run import Run
from ledger.store import Ledger, opened
from ledger.worker import lease_until

TOPIC = "numbers"
P0 = partition_key(TOPIC, 0)
P1 = partition_key(TOPIC, 1)

# The child process that crashes imports this module from here.
HERE = Path(__file__).resolve().parent


class Numbers(ConsumerJob):
    """A consumer whose output is each message's value."""

    name = "recorder-numbers"
    version = "1"
    group_id = "recorder"
    topics = (TOPIC,)

    def handle(self, message: Message, counters: Counter[str]) -> Any:
        return message.value

    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        return len(outputs)


def recorder(ledger: Ledger, member: str) -> ConsumerRecorder:
    """A member of the group, with its run claimed."""
    claimed = ConsumerRecorder(ledger, Numbers(), __name__, member, {})
    claimed.claim()
    return claimed


def assigned(key: str, ledger_position: int | None) -> dict[str, Any]:
    """A partition as the consumer records it when Kafka agrees."""
    return {
        "partition": key,
        "start": ledger_position or 0,
        "source": "ledger" if ledger_position is not None else "reset",
        "ledger": ledger_position,
        "kafka": ledger_position,
        "divergence": "none",
    }


def handle_all(done: dict[str, tuple[int, int]]) -> Handled:
    """A batch whose every message was handled: offsets first..last."""
    result = Handled(done=dict(done))
    for key, (first, last) in done.items():
        partition = int(key.rpartition("[")[2].rstrip("]"))
        result.counts[key] = last - first + 1
        for offset in range(first, last + 1):
            message = Message(TOPIC, partition, offset, None, b"%d" % offset)
            result.outputs.append((message, message.value))
    return result


def run_batch(
    member: ConsumerRecorder, done: dict[str, tuple[int, int]]
) -> Checkpointed:
    """Starts, handles and checkpoints one batch, as the consumer does."""
    ranges = [
        {"partition": key, "first": first, "last": last}
        for key, (first, last) in sorted(done.items())
    ]
    batch = member.start_batch(ranges)
    handled = handle_all(done)
    return member.checkpoint(batch, handled, len(handled.outputs), {}, {})


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with opened(parse_ledger_url(ledger_url)) as opened_ledger:
        yield opened_ledger


def test_a_checkpoint_saves_the_positions_it_covers(ledger: Ledger) -> None:
    member = recorder(ledger, "a")
    member.record_assigned([assigned(P0, None), assigned(P1, None)])

    result = run_batch(member, {P0: (0, 9), P1: (0, 4)})

    # Positions are the next offsets to read, saved with the checkpoint.
    assert result == Checkpointed(accepted={P0: 10, P1: 5}, superseded={})
    assert member.positions() == {P0: 10, P1: 5}
    run: Run = ledger.repository.get(member.current.id)
    assert run.partitions == {P0: 10, P1: 5}
    assert run.open_batch is None
    assert run.totals["consume.records"] == 15


def test_a_stale_checkpoint_is_superseded_and_a_moving_one_accepted(
    ledger: Ledger,
) -> None:
    late = recorder(ledger, "late")
    late.record_assigned([assigned(P0, None), assigned(P1, None)])
    run_batch(late, {P0: (0, 9), P1: (0, 4)})

    # The group gives partition 0 to another member, which moves it on
    # before the late member, not yet told, checkpoints it.
    owner = recorder(ledger, "owner")
    owner.record_assigned([assigned(P0, 10)])
    run_batch(owner, {P0: (10, 19)})

    result = run_batch(late, {P0: (10, 14), P1: (5, 9)})

    # Partition 0 keeps the owner's position; partition 1 still moves on.
    assert result == Checkpointed(accepted={P1: 10}, superseded={P0: 20})
    assert late.positions() == {P0: 20, P1: 10}

    # The late run records the refusal and stops reading partition 0.
    run: Run = ledger.repository.get(late.current.id)
    assert run.partitions == {P1: 10}
    assert run.batches_done["consume"] == 2
    superseded = [
        event.partitions
        for event in ledger.repository.event_store.get(run.id)
        if isinstance(event, MessagesSuperseded)
    ]
    assert superseded == [[{"partition": P0, "next": 15, "recorded": 20}]]


def test_a_position_that_is_not_the_next_offset_to_read_is_refused(
    ledger: Ledger,
) -> None:
    member = recorder(ledger, "a")
    member.record_assigned([assigned(P0, None)])
    batch = member.start_batch([{"partition": P0, "first": 0, "last": 9}])

    # The offset of the last message is not where the partition resumes.
    with pytest.raises(OffsetConventionError, match="next offset to read") as refused:
        checkpoint_messages(
            member.current,
            attempt=member.attempt,
            batch=batch,
            ranges=[{"partition": P0, "first": 0, "last": 9, "next": 9, "lag": 0}],
            records=10,
            written=10,
            quarantined=0,
            counters={},
            lease_until=lease_until(),
        )
    assert "which is 10" in str(refused.value)

    # Nothing was triggered, so nothing can be saved by mistake.
    assert member.current.pending_events == []
    assert member.positions() == {}


def start_batch_and_die() -> None:
    """In a child process: checkpoints offsets 0..4, starts a batch of
    offsets 5..9 and is killed before it records anything else."""
    with opened(parse_ledger_url(os.environ["LEDGER_URL"])) as ledger:
        member = recorder(ledger, "crashing")
        member.record_assigned([assigned(P0, None)])
        run_batch(member, {P0: (0, 4)})
        member.start_batch([{"partition": P0, "first": 5, "last": 9}])
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_batch_a_crash_interrupted_is_remembered_by_its_offsets(
    ledger_url: str, ledger: Ledger
) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from test_consumer_recorder import start_batch_and_die\n"
            "start_batch_and_die()",
        ],
        env={**os.environ, "LEDGER_URL": ledger_url, "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr

    # The same member starts again: its run's dead attempt is closed as
    # crashed, and the started batch's offsets become a crash range.
    member = recorder(ledger, "crashing")
    run: Run = ledger.repository.get(member.current.id)
    assert (run.attempt, run.status) == (2, "running")
    assert run.crashed_ranges == [{"partition": P0, "first": 5, "last": 9}]
    assert crash_count(run, TOPIC, 0, 7) == 1
    assert [crash_count(run, TOPIC, 0, offset) for offset in (4, 10)] == [0, 0]
    assert crash_count(run, TOPIC, 1, 7) == 0
    assert member.positions() == {P0: 5}

    # Once a checkpoint passes it, the crash range is forgotten.
    run_batch(member, {P0: (5, 9)})
    run = ledger.repository.get(member.current.id)
    assert run.crashed_ranges == []
    assert member.positions() == {P0: 10}
