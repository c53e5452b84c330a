"""The Kafka broker that scripts/kafka.sh starts serves a full round trip.

Produces 1,000 records to a new three-partition topic, consumes them in a
consumer group, commits, and reads the committed offsets back from the
broker. A missing broker is a failure, not a skip: a green run must mean
that the Kafka path was exercised.

The broker address comes from LEDGER_TEST_KAFKA (default 127.0.0.1:19092).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

pytestmark = pytest.mark.kafka

BOOTSTRAP = os.environ.get("LEDGER_TEST_KAFKA", "127.0.0.1:19092")
RECORDS = 1_000
PARTITIONS = 3
# Generous for a 2-core CI machine; the first group on a fresh broker also
# creates the 50-partition __consumer_offsets topic.
DEADLINE_S = 60.0


def test_round_trip_commits_next_offset_to_read() -> None:
    asyncio.run(_round_trip())


async def _round_trip() -> None:
    await _require_broker()
    topic = f"test-broker-{uuid.uuid4().hex[:12]}"
    group = f"{topic}-group"
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await _create_topic(admin, topic)
        produced = await _produce(topic)
        consumed = await _consume_and_commit(topic, group)

        # Every record arrives once, at the partition and offset that the
        # producer was told, and in offset order within its partition.
        assert sorted(consumed) == sorted(produced)
        for partition in range(PARTITIONS):
            offsets = [offset for p, offset, _ in consumed if p == partition]
            assert offsets == sorted(offsets)

        # Read back through the admin client, a separate connection from the
        # consumer that committed: the committed offset is the next offset
        # to read, so it equals the number of records in the partition.
        committed = await admin.list_consumer_group_offsets(group)
        counts = Counter(partition for partition, _, _ in produced)
        assert {tp.partition: meta.offset for tp, meta in committed.items()} == {
            partition: counts[partition] for partition in range(PARTITIONS)
        }
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def _require_broker() -> None:
    host, _, port = BOOTSTRAP.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), timeout=5
        )
    except (OSError, TimeoutError) as exc:
        reason = repr(exc)
    else:
        writer.close()
        await writer.wait_closed()
        return

    # Failed outside the except block, so that the report shows this
    # message and not the connection error's traceback.
    pytest.fail(
        f"no Kafka broker answers at {BOOTSTRAP} ({reason}): start one with "
        "scripts/kafka.sh, or point LEDGER_TEST_KAFKA at a running broker",
        pytrace=False,
    )


async def _create_topic(admin: AIOKafkaAdminClient, topic: str) -> None:
    response = await admin.create_topics(
        [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]
    )
    errors = [(name, code) for name, code, *_ in response.topic_errors if code]
    assert not errors, f"create_topics failed: {errors}"

    # Creation returns before every partition has a leader; producing to a
    # leaderless partition would fail the test for the wrong reason.
    await _wait_for(
        lambda: _has_leaders(admin, topic), f"leaders for the partitions of {topic}"
    )


async def _has_leaders(admin: AIOKafkaAdminClient, topic: str) -> bool:
    described = await admin.describe_topics([topic])
    partitions = described[0]["partitions"] if described else []
    leaders = [p["leader"] for p in partitions]
    return len(leaders) == PARTITIONS and all(leader >= 0 for leader in leaders)


async def _produce(topic: str) -> list[tuple[int, int, bytes]]:
    values = [f"record-{i}".encode() for i in range(RECORDS)]
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:
        # Explicit partitions so that each of the three gets records.
        sent = [
            await producer.send(topic, value, partition=i % PARTITIONS)
            for i, value in enumerate(values)
        ]
        acked = await asyncio.wait_for(asyncio.gather(*sent), timeout=DEADLINE_S)
    finally:
        await producer.stop()
    return [
        (meta.partition, meta.offset, value)
        for meta, value in zip(acked, values, strict=True)
    ]


async def _consume_and_commit(topic: str, group: str) -> list[tuple[int, int, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumed: list[tuple[int, int, bytes]] = []
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while len(consumed) < RECORDS:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"consumed {len(consumed)} of {RECORDS} records"
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                consumed += [(r.partition, r.offset, r.value or b"") for r in records]
        assert len(consumed) == RECORDS

        await consumer.commit()
        # The consumer's own view, fetched from the group coordinator.
        for partition in range(PARTITIONS):
            tp = TopicPartition(topic, partition)
            assert await consumer.committed(tp) == await consumer.position(tp)
    finally:
        await consumer.stop()
    return consumed


async def _wait_for(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE_S
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if await check():
                return
        except KafkaError:
            # Metadata is briefly inconsistent right after a topic is
            # created; only the deadline decides that it will not settle.
            pass
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
