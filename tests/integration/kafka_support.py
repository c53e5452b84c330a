"""What the consumer tests share: topics, messages, offsets and processes.

Everything runs against the real broker that scripts/kafka.sh starts
(LEDGER_TEST_KAFKA, default 127.0.0.1:19092) and the real `ledger consume`
command in subprocesses, so that a kill -9 is a real one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from conftest import LEDGER, REPO

from ledger.config import parse_ledger_url
from ledger.positions import load_positions
from ledger.store import opened

BOOTSTRAP = os.environ.get("LEDGER_TEST_KAFKA", "127.0.0.1:19092")
STREAM_JOB = REPO / "tests" / "jobs" / "stream.py"


def require_broker() -> None:
    host, _, port = BOOTSTRAP.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        pytest.fail(
            f"no Kafka broker answers at {BOOTSTRAP} ({error!r}): start one with "
            "scripts/kafka.sh, or point LEDGER_TEST_KAFKA at a running broker",
            pytrace=False,
        )


def new_names(prefix: str) -> tuple[str, str]:
    """A fresh topic and group, so that no test sees another's offsets."""
    suffix = uuid.uuid4().hex[:10]
    return f"{prefix}-{suffix}", f"{prefix}-group-{suffix}"


def create_topic(topic: str, partitions: int) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
            for _ in range(200):
                described = await admin.describe_topics([topic])
                leaders = [p["leader"] for p in described[0]["partitions"]]
                if len(leaders) == partitions and min(leaders) >= 0:
                    return
                await asyncio.sleep(0.05)
            pytest.fail(f"partitions of {topic} got no leader")
        finally:
            await admin.close()

    asyncio.run(create())


def produce(
    topic: str, values: list[dict[str, Any]], partitions: int
) -> list[tuple[int, int]]:
    """Sends each value as JSON, round-robin over the partitions; returns
    (partition, offset) per value, in order."""

    async def send() -> list[tuple[int, int]]:
        producer = AIOKafkaProducer(
            bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=10
        )
        await producer.start()
        try:
            pending = [
                await producer.send(
                    topic, orjson.dumps(value), partition=index % partitions
                )
                for index, value in enumerate(values)
            ]
            sent = await asyncio.gather(*pending)
        finally:
            await producer.stop()
        return [(meta.partition, meta.offset) for meta in sent]

    return asyncio.run(send())


def kafka_committed(group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (next offset to read) per partition."""

    async def fetch() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {
            tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic
        }

    return asyncio.run(fetch())


def end_offsets(topic: str, partitions: int) -> dict[int, int]:
    async def fetch() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return {tp.partition: offset for tp, offset in ends.items()}

    return asyncio.run(fetch())


def read_topic(topic: str) -> list[Any]:
    """Every record of a topic, from the start (for the quarantine topic)."""

    async def fetch() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            records: list[Any] = []
            while True:
                batch = await consumer.getmany(timeout_ms=2000)
                if not batch:
                    return records
                for items in batch.values():
                    records.extend(items)
        finally:
            await consumer.stop()

    return asyncio.run(fetch())


def ledger_positions(url: str, group: str, topic: str) -> dict[int, int]:
    with opened(parse_ledger_url(url)) as ledger:
        found = load_positions(ledger, group)
    return {p.partition: n for p, n in found.items() if p.topic == topic}


def sink_rows(path: Path) -> list[tuple[int, int, int, int]]:
    """(partition, offset, n, deliveries) of every row in the test sink."""
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT part, off, n, deliveries FROM sink").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


class ConsumerProcess:
    """`ledger consume tests/jobs/stream.py` in a subprocess of its own."""

    def __init__(
        self,
        *,
        url: str,
        topic: str,
        group: str,
        sink: Path,
        member: str,
        folder: Path,
        until_idle: float | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        args = [*LEDGER, "--log-level", "info", "consume", str(STREAM_JOB)]
        args += ["--bootstrap-servers", BOOTSTRAP, "--member", member, "--json"]
        if until_idle is not None:
            args += ["--until-idle", str(until_idle)]
        self.log = folder / f"consumer-{member}-{uuid.uuid4().hex[:6]}.log"
        full_env = {
            **os.environ,
            "LEDGER_URL": url,
            "STREAM_TOPIC": topic,
            "STREAM_GROUP": group,
            "STREAM_SINK": str(sink),
            **(env or {}),
        }
        self.stdout = folder / f"{self.log.stem}.out"
        with self.log.open("w") as err, self.stdout.open("w") as out:
            self.process = subprocess.Popen(
                args, cwd=folder, env=full_env, stdout=out, stderr=err
            )

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"consumer did not stop in {timeout}s; log: {self.tail()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def summary(self) -> dict[str, Any]:
        text = self.stdout.read_text()
        assert text, f"no summary; log: {self.tail()}"
        value: dict[str, Any] = orjson.loads(text)
        return value

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:])

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The structured log records of one event name."""
        found = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                record = orjson.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found


def checkpointed_ranges(url: str) -> dict[str, list[tuple[int, int]]]:
    """Per partition, the (first, last) offsets of every batch any run
    checkpointed, from the stored events, in log order."""
    found: dict[str, list[tuple[int, int]]] = {}
    with opened(parse_ledger_url(url)) as ledger:
        start = 1
        while True:
            page = ledger.recorder.select_notifications(start, 1000)
            if not page:
                return found
            for notification in page:
                if notification.topic.endswith("MessagesCheckpointed"):
                    for item in orjson.loads(notification.state)["ranges"]:
                        found.setdefault(item["partition"], []).append(
                            (item["first"], item["last"])
                        )
            start = page[-1].id + 1
