"""A second consumer joins while the first is in the middle of a batch.

The first consumer's revoke handler stops the batch on the partitions it
gives up, checkpoints what it finished, and records the revocation; the
second resumes each partition exactly there. Per partition, the
checkpointed batches of both consumers tile the partition: no gap, no
overlap, nothing superseded.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import ledger_command, wait_until
from kafka_support import (
    ConsumerProcess,
    checkpointed_ranges,
    create_topic,
    end_offsets,
    kafka_committed,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 2
COUNT = 2_000
TIMING = {
    "LEDGER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "LEDGER_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "STREAM_SLOW_MS": "3",
    "STREAM_BATCH": "100",
}


def test_graceful_handover_checkpoints_finished_work_only(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("handover")
    create_topic(topic, PARTITIONS)
    produce(topic, [{"n": n} for n in range(COUNT)], PARTITIONS)
    sink = tmp_path / "sink.sqlite"
    common = {
        "url": sqlite_url, "topic": topic, "group": group, "sink": sink,
        "folder": tmp_path, "until_idle": 2.0, "env": TIMING,
    }  # fmt: skip

    # A works alone for a while; then B joins and takes a partition.
    a = ConsumerProcess(**common, member="a")
    wait_until(
        lambda: sum(ledger_positions(sqlite_url, group, topic).values()) >= 300,
        "consumer A to checkpoint a few batches",
        90,
    )
    b = ConsumerProcess(**common, member="b")
    assert b.wait(timeout=180) == 0, b.tail()
    assert a.wait(timeout=180) == 0, a.tail()

    # A gave partitions up and recorded it; B took over from the ledger.
    assert a.logged("partitions.revoked"), a.tail()
    assert b.logged("partition.assigned"), b.tail()

    # Per partition, the two consumers' checkpoints tile it exactly once.
    ends = end_offsets(topic, PARTITIONS)
    ranges = checkpointed_ranges(sqlite_url)
    for partition, end in ends.items():
        covered = sorted(ranges[f"{topic}[{partition}]"])
        offsets = [o for first, last in covered for o in range(first, last + 1)]
        assert offsets == list(range(end)), f"partition {partition}"

    # Nothing was refused: the handover was graceful.
    for consumer in (a, b):
        assert consumer.summary()["superseded"] == 0
        history = ledger_command(
            ["history", consumer.summary()["run_id"], "--json"],
            url=sqlite_url, cwd=tmp_path,
        )  # fmt: skip
        attempts = orjson.loads(history.stdout)["attempts"]
        assert all(not attempt["superseded"] for attempt in attempts)

    rows = sink_rows(sink)
    assert sorted(n for _, _, n, _ in rows) == list(range(COUNT))
    assert ledger_positions(sqlite_url, group, topic) == ends
    assert kafka_committed(group, topic) == ends
