"""Adversarial: the fetch buffer's round robin with small batches.

consumers/fetch.py: "aiokafka hands out one partition's buffered records
first, which would leave the other partitions waiting while the first has
any: batches are taken from every partition in turn instead." `take`
restarts its turn at the first partition (in name order) on every call.
With `batch_max_records` smaller than the number of partitions holding
messages, every batch is filled from the first ones, and the others wait
until those run dry: with batches of one message, p1 waits for all of p0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    ConsumerProcess,
    create_topic,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_small_batches_take_from_every_partition_in_turn(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("attack2-fairness")
    create_topic(topic, 2)

    # Round robin over two partitions: 200 messages each.
    produce(topic, [{"n": n} for n in range(400)], 2)
    sink = tmp_path / "sink.sqlite"
    consumer = ConsumerProcess(
        url=sqlite_url, topic=topic, group=group, sink=sink,
        member="fair", folder=tmp_path, until_idle=2,
        env={"STREAM_BATCH": "1", "STREAM_SLOW_MS": "5"},
    )  # fmt: skip

    def handled() -> tuple[int, int]:
        rows = sink_rows(sink)
        return (sum(r[0] == 0 for r in rows), sum(r[0] == 1 for r in rows))

    wait_until(lambda: handled()[0] >= 100 or handled()[1] > 0, "progress", 60)
    p0, p1 = handled()
    assert consumer.wait(timeout=180) == 0, consumer.tail()
    assert p1 > 0, f"p0 had {p0} messages handled before p1 had its first"
