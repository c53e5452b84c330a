"""Adversarial: topics written by transactional producers.

Transactions leave gaps in a partition's offsets (one commit or abort
marker per transaction) and, when aborted, records that were never meant
to be read. The consumer reads with aiokafka's default isolation level
(`read_uncommitted`) and counts a batch's messages as `last - first + 1`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from conftest import ledger_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    BOOTSTRAP,
    ConsumerProcess,
    create_topic,
    end_offsets,
    kafka_committed,
    ledger_positions,
    new_names,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _transactions(topic: str, plan: list[tuple[list[int], bool]]) -> None:
    """Sends each list of numbers in one transaction, committed or aborted."""

    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=BOOTSTRAP,
            transactional_id=f"attack-tx-{uuid.uuid4().hex[:8]}",
        )
        await producer.start()
        try:
            for numbers, commit in plan:
                await producer.begin_transaction()
                for n in numbers:
                    await producer.send_and_wait(
                        topic, orjson.dumps({"n": n}), partition=0
                    )
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(send())


def _consume(tmp_path: Path, url: str, topic: str, group: str) -> ConsumerProcess:
    consumer = ConsumerProcess(
        url=url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="tx", folder=tmp_path, until_idle=2,
    )  # fmt: skip
    assert consumer.wait() == 0, consumer.tail()
    return consumer


def test_aborted_transactions_never_reach_the_sink(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Guards against: records of an aborted transaction handled and written
    like committed ones (the consumer never sets read_committed)."""
    require_broker()
    topic, group = new_names("attack-abort")
    create_topic(topic, 1)
    _transactions(
        topic, [(list(range(5)), True), ([100, 101, 102], False), ([5, 6], True)]
    )

    _consume(tmp_path, sqlite_url, topic, group)

    numbers = sorted(n for _, _, n, _ in sink_rows(tmp_path / "sink.sqlite"))
    assert numbers == list(range(7)), f"aborted records were handled: {numbers}"
    assert ledger_positions(sqlite_url, group, topic) == kafka_committed(group, topic)


def test_status_counts_messages_not_offsets(tmp_path: Path, sqlite_url: str) -> None:
    """Guards against: `ledger status`, the summary and the run's totals
    counting each transaction marker as a message handled, and a lag of 1
    that never goes away once the partition is read to its end."""
    require_broker()
    topic, group = new_names("attack-markers")
    create_topic(topic, 1)
    _transactions(topic, [(list(range(5)), True), (list(range(5, 10)), True)])

    consumer = _consume(tmp_path, sqlite_url, topic, group)
    assert len(sink_rows(tmp_path / "sink.sqlite")) == 10

    # Ten messages; the partition's end is 12 (two commit markers).
    assert end_offsets(topic, 1) == {0: 12}
    assert consumer.summary()["messages"] == 10, consumer.summary()
    shown = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    (run,) = orjson.loads(shown.stdout)
    (step,) = run["steps"]
    assert step["records"] == 10, step
    (partition,) = run["consumer"]["partitions"]
    assert partition["lag"] == 0, partition
