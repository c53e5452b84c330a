"""Adversarial: one dropped ledger connection outside `ConsumerRecorder._commit`.

README, "Ledger outages": "When the ledger cannot be reached, nothing is
checkpointed and nothing is committed to Kafka; the consumer retries for
up to LEDGER_OUTAGE_SECONDS (60) and goes on when the ledger answers".
Saves go through `_commit`, which does that. Reads of the group's
positions (`ConsumerRecorder.positions`, the store's `select_positions`,
which the library does not retry) do not:

- on assignment the read happens inside aiokafka's rebalance listener,
  which logs the exception (hidden at the default log level) and carries
  on: the partition is never sought nor expected by the fetch buffer, so
  its messages are fetched and dropped, and the consumer sits idle with
  work waiting, for ever;
- with --until-idle the read happened on every idle pass: one dropped
  connection failed the run (exit 1, recorded as a job failure with the
  driver's multi-line message).

Both found at 01f6b31; 1d2e6d9 retries position reads like saves, stops the
loop when a rebalance callback fails, and no longer reads positions while
a member with partitions is idle (the idle-pass test was dropped: that
read no longer happens). The test below guards the assignment case.

The ledger is reached through the proxy of
test_consumer_attack2_lost_commit_answer, which here cuts the connection
that sends the positions query, once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from test_consumer_attack2_lost_commit_answer import CommitAnswerDropper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    ConsumerProcess,
    create_topic,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

COUNT = 50
POSITIONS_QUERY = b"SELECT application_name, notification_id FROM"


@pytest.fixture
def dropper(postgres_url: str) -> Iterator[tuple[CommitAnswerDropper, str]]:
    parts = urlsplit(postgres_url)
    assert parts.hostname
    assert parts.port
    proxy = CommitAnswerDropper((parts.hostname, parts.port))
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        proxy.close()


def _setup() -> tuple[str, str]:
    require_broker()
    topic, group = new_names("attack2-blip")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(COUNT)], 1)
    return topic, group


def test_a_dropped_connection_on_assignment_does_not_stall_the_partition(
    tmp_path: Path, dropper: tuple[CommitAnswerDropper, str]
) -> None:
    proxy, url = dropper
    topic, group = _setup()
    proxy.cut_when_sent(POSITIONS_QUERY, times=1)
    consumer = ConsumerProcess(
        url=url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="blip", folder=tmp_path, until_idle=2,
    )  # fmt: skip
    try:
        code = consumer.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        consumer.process.terminate()
        consumer.process.wait(timeout=60)
        code = None
    assert proxy.cuts == 1
    handled = len(sink_rows(tmp_path / "sink.sqlite"))
    assert handled == COUNT, (
        f"one dropped connection while the partition was assigned: {handled} of "
        f"{COUNT} messages handled in 60 s, ledger positions "
        f"{ledger_positions(url, group, topic)}, exit {code}"
    )
    assert code == 0, consumer.tail()
