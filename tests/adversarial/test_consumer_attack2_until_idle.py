"""Adversarial: `ledger consume --until-idle` that never stops.

Since "--until-idle waits for the group to read every partition of its
topics", `_caught_up` compares the group's *ledger* positions (or, with
none, the log's first offset) with the partitions' ends. But the ledger's
position only moves when a batch of messages is checkpointed. Whenever the
log's end lies past the last message a consumer can ever checkpoint, the
comparison never holds and the consumer, caught up and idle, runs for
ever instead of stopping:

- the log ends with an aborted transaction (its records and its marker
  hold offsets, and no message follows to checkpoint past them);
- retention deleted unread messages, so the consumer starts, reported
  `truncated`, at the log's end, with nothing to checkpoint;
- a job whose `auto_offset_reset` is "latest" starts a new group on a
  topic that already holds messages: it starts at the end, and the group
  has no ledger position, so the log's first offset is compared instead.

Each case is a plain `ledger consume ... --until-idle 1` that must exit 0
within 60 s. All three hung at 0aacde0 (where the group-wide check came
in) and pass since 1d2e6d9, which compares a member's own client positions
again; these tests guard that.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import kafka_support
from kafka_support import (
    BOOTSTRAP,
    STREAM_JOB,
    ConsumerProcess,
    create_topic,
    ledger_positions,
    new_names,
    produce,
    require_broker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _job_with_reset(folder: Path, reset: str) -> Path:
    path = folder / f"stream_{reset}.py"
    path.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('stream_{uuid.uuid4().hex}', "
        f"{str(STREAM_JOB)!r})\n"
        "base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n\n\n"
        "class StreamReset(base.StreamNumbers):\n"
        f"    auto_offset_reset = {reset!r}\n\n\n"
        "job = StreamReset()\n"
    )
    return path


def _consume_until_idle(folder: Path, url: str, topic: str, group: str) -> None:
    """Runs `ledger consume --until-idle 1`; fails the test if it is still
    running after 60 s (then stops it with SIGTERM)."""
    consumer = ConsumerProcess(
        url=url, topic=topic, group=group, sink=folder / "sink.sqlite",
        member="idle", folder=folder, until_idle=1,
    )  # fmt: skip
    try:
        code = consumer.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        consumer.process.terminate()
        consumer.process.wait(timeout=60)
        pytest.fail(
            "`ledger consume --until-idle 1` was caught up and idle, yet still "
            f"running after 60 s; ledger positions "
            f"{ledger_positions(url, group, topic)}; log: {consumer.tail(5)}"
        )
    assert code == 0, consumer.tail()


def _transaction(topic: str, numbers: list[int], commit: bool) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=BOOTSTRAP,
            transactional_id=f"attack2-idle-{uuid.uuid4().hex[:8]}",
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            for n in numbers:
                await producer.send_and_wait(topic, orjson.dumps({"n": n}), partition=0)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(send())


def test_until_idle_stops_after_a_trailing_aborted_transaction(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("attack2-idle-abort")
    create_topic(topic, 1)
    _transaction(topic, list(range(5)), commit=True)
    _consume_until_idle(tmp_path, sqlite_url, topic, group)

    # An aborted transaction: nothing to read, offsets 6..9 taken.
    _transaction(topic, [100, 101, 102], commit=False)
    _consume_until_idle(tmp_path, sqlite_url, topic, group)


def test_until_idle_stops_after_retention_deleted_unread_messages(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("attack2-idle-trunc")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(10)], 1)
    _consume_until_idle(tmp_path, sqlite_url, topic, group)
    produce(topic, [{"n": n} for n in range(10, 20)], 1)

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            await admin.delete_records(
                {TopicPartition(topic, 0): RecordsToDelete(before_offset=20)}
            )
        finally:
            await admin.close()

    asyncio.run(delete())
    _consume_until_idle(tmp_path, sqlite_url, topic, group)


def test_until_idle_stops_for_a_latest_job_on_a_topic_with_history(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_broker()
    topic, group = new_names("attack2-idle-latest")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(10)], 1)
    monkeypatch.setattr(
        kafka_support, "STREAM_JOB", _job_with_reset(tmp_path, "latest")
    )
    _consume_until_idle(tmp_path, sqlite_url, topic, group)
