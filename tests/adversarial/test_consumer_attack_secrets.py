"""Adversarial: a sensitive field in a message that is not valid JSON.

consumers/job.py: `sensitive_fields` are "Fields whose values never reach
the ledger or the logs". `ConsumerJob.preview` redacts them only when the
value parses as JSON; otherwise it keeps the first 500 bytes as text,
secret and all. A malformed message is exactly the kind that ends in
quarantine, so the secret is stored in a `MessageQuarantined` event and
printed by `ledger quarantine list`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from conftest import ledger_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    BOOTSTRAP,
    ConsumerProcess,
    create_topic,
    new_names,
    require_broker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SECRET = "hunter2-must-not-leak"

# tests/jobs/stream.py declares `secret` sensitive. Each value is broken
# JSON in a way real producers break it.
MALFORMED = [
    b'{"n": 1, "secret": "' + SECRET.encode() + b'",}',  # trailing comma
    b'{"n": 2, "secret": "' + SECRET.encode() + b'", "x": NaN}',  # NaN
    b'{"n": 3, "secret": "' + SECRET.encode() + b'"',  # truncated
]


def test_a_malformed_message_does_not_leak_its_sensitive_field(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("attack-secret")
    create_topic(topic, 1)

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
        await producer.start()
        try:
            for value in MALFORMED:
                await producer.send_and_wait(topic, value, partition=0)
        finally:
            await producer.stop()

    asyncio.run(send())

    consumer = ConsumerProcess(
        url=sqlite_url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="secret", folder=tmp_path, until_idle=1.5,
    )  # fmt: skip
    assert consumer.wait() == 0, consumer.tail()

    # All three were quarantined ...
    listed = ledger_command(
        ["quarantine", "list", "--json"], url=sqlite_url, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"handler-error"') == 3, listed.stdout

    # ... and the secret is in none of what the ledger shows, logs or keeps.
    assert SECRET not in listed.stdout, listed.stdout
    assert SECRET not in consumer.log.read_text()
    store = Path(sqlite_url.removeprefix("sqlite:///"))
    with sqlite3.connect(store) as db:
        states = [
            bytes(row[0]) for row in db.execute("SELECT state FROM stored_events")
        ]
    leaked = [s for s in states if SECRET.encode() in s]
    assert not leaked, f"{len(leaked)} stored events hold the secret"
