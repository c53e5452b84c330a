"""Adversarial: poison that cannot be copied to the quarantine topic blocks
its partition forever.

README: "A message whose handler raises is retried ..., then quarantined
with its error class", so that its partition moves on. The copy to
`TOPIC.quarantine` happens before the checkpoint, and any error in it fails
the run; the restart fetches the same batch, meets the same message and
fails again, for ever. Two legal Kafka records do that:

- a value that fits the broker's default limit (1 MiB) but not once the
  ledger's eight `ledger.*` headers are added to the copy;
- a record with neither key nor value (a keyless tombstone), which aiokafka's
  producer refuses to send.
"""

from __future__ import annotations

import asyncio
import sys
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
    ledger_positions,
    new_names,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Fits the broker's default message.max.bytes (1,048,588) on its own.
NEAR_LIMIT = 1_048_400


def _produce_around(topic: str, poison_value: bytes | None) -> None:
    """{"n": 0}, the poison record (key and value as given), {"n": 2}."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, orjson.dumps({"n": 0}), partition=0)
            # The batch API takes what `send` refuses (no key and no value),
            # as the Java client and every other producer do.
            batch = producer.create_batch()
            batch.append(key=None, value=poison_value, timestamp=None)
            batch.close()
            await (await producer.send_batch(batch, topic, partition=0))
            await producer.send_and_wait(topic, orjson.dumps({"n": 2}), partition=0)
        finally:
            await producer.stop()

    asyncio.run(send())


def _consume_until_clean(
    tmp_path: Path, url: str, topic: str, group: str, starts: int = 3
) -> list[int]:
    exits: list[int] = []
    for _ in range(starts):
        consumer = ConsumerProcess(
            url=url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
            member="copy", folder=tmp_path, until_idle=1.5,
        )  # fmt: skip
        exits.append(consumer.wait())
        if exits[-1] == 0:
            break
    return exits


@pytest.mark.parametrize(
    "poison_value",
    [b"x" * NEAR_LIMIT, None],
    ids=["value-near-the-size-limit", "no-key-and-no-value"],
)
def test_poison_that_cannot_be_copied_does_not_block_its_partition(
    tmp_path: Path, sqlite_url: str, poison_value: bytes | None
) -> None:
    """Guards against: MessageSizeTooLargeError / AssertionError from the
    quarantine copy failing the run on every start, with the partition held
    at the poison message for good (and its neighbours handled again and
    again)."""
    require_broker()
    topic, group = new_names("attack-copy")
    create_topic(topic, 1)
    _produce_around(topic, poison_value)

    exits = _consume_until_clean(tmp_path, sqlite_url, topic, group)
    assert exits[-1] == 0, f"every start failed: exits {exits}"

    # The poison is quarantined, its partition moved past it, and its
    # neighbours are in the sink once.
    listed = ledger_command(["quarantine", "list", "--json"], url=sqlite_url,
                            cwd=tmp_path)  # fmt: skip
    records = orjson.loads(listed.stdout)["records"]
    assert [q["record"] for q in records] == [1]
    assert ledger_positions(sqlite_url, group, topic) == end_offsets(topic, 1)
    rows = sink_rows(tmp_path / "sink.sqlite")
    assert sorted((off, deliveries) for _, off, _, deliveries in rows) == [
        (0, 1),
        (2, 1),
    ]
