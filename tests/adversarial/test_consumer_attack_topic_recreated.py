"""Adversarial: the ledger's position lies beyond the partition's end.

A topic deleted and created again (or a log truncated by an unclean leader
election) starts its offsets over. The ledger still holds the old
topic's position, 10. The consumer seeks there, Kafka answers "offset out
of range", the reset policy moves the fetch to offset 0, and the consumer
drops every record below 10 as "fetched before the assignment" (the
`_next` filter in consumers/consumer.py). It then reports itself idle
and caught up, exit code 0: the new topic's messages are lost without a
word, and the story told is `behind` ("the process died between the two
commits"), which is not what happened.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from conftest import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    BOOTSTRAP,
    ConsumerProcess,
    create_topic,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _delete_topic(topic: str) -> None:
    async def delete() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            await admin.delete_topics([topic])
            return True
        finally:
            await admin.close()

    asyncio.run(delete())

    async def gone() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            return topic not in await admin.list_topics()
        finally:
            await admin.close()

    wait_until(lambda: asyncio.run(gone()), f"topic {topic} to be deleted", 60)


def _create_again(topic: str) -> bool:
    try:
        create_topic(topic, 1)
    except KafkaError:
        # Deletion finishes in the background; wait_until tries again.
        return False
    return True


def test_a_recreated_topic_is_not_skipped_silently(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Guards against: messages of a recreated topic dropped because the
    ledger's position (10) lies past the new partition's end (6)."""
    require_broker()
    topic, group = new_names("attack-recreate")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(10)], 1)
    common = {
        "url": sqlite_url, "topic": topic, "group": group,
        "sink": tmp_path / "sink.sqlite", "member": "recreate",
        "folder": tmp_path, "until_idle": 1.5,
    }  # fmt: skip
    first = ConsumerProcess(**common)  # type: ignore[arg-type]
    assert first.wait() == 0, first.tail()

    _delete_topic(topic)
    wait_until(lambda: _create_again(topic), f"topic {topic} to be created again", 60)
    produce(topic, [{"n": n} for n in range(100, 106)], 1)

    second = ConsumerProcess(**common)  # type: ignore[arg-type]
    code = second.wait()

    # Either the consumer says what is wrong, or it handles the new
    # messages; exit 0 with them missing is silent loss.
    numbers = {n for _, _, n, _ in sink_rows(tmp_path / "sink.sqlite")}
    handled = set(range(100, 106)) <= numbers
    assert code != 0 or handled, (
        f"exit 0, new messages missing from the sink: {sorted(numbers)}; "
        f"summary: {second.summary()}"
    )
