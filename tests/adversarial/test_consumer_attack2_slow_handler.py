"""Adversarial: a handler slower than max_poll_interval_ms.

One member, one partition, batches of 200 messages of 50 ms each (10 s a
batch) and LEDGER_KAFKA_MAX_POLL_INTERVAL_MS=3000. aiokafka drops out of
the group when the consumer does not poll for 3 s; the revoke stops the
batch, which checkpoints what it did; the Kafka commit that follows is
refused (the member is unknown to the group now); the consumer rejoins
and is given its partition back.

Nothing is lost or duplicated, but each of those rejoins is recorded as
divergence `behind`, which README defines as "the process died between
the two commits": no process died. `ledger status` and the summary show
it, and an operator reading them goes looking for crashes that never
happened.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
from conftest import ledger_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    ConsumerProcess,
    create_topic,
    kafka_committed,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 300


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known gap: a handler slower than max_poll_interval_ms makes every "
        "rejoin read as Kafka behind"
    ),
)
def test_a_slow_handler_is_not_reported_as_a_dead_process(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("attack2-slow")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(COUNT)], 1)
    consumer = ConsumerProcess(
        url=sqlite_url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="slow", folder=tmp_path, until_idle=3,
        env={"STREAM_SLOW_MS": "50", "LEDGER_KAFKA_MAX_POLL_INTERVAL_MS": "3000"},
    )  # fmt: skip
    assert consumer.wait(timeout=300) == 0, consumer.tail()

    # The invariants hold.
    rows = sink_rows(tmp_path / "sink.sqlite")
    assert sorted(n for _, _, n, _ in rows) == list(range(COUNT))
    assert all(deliveries == 1 for *_, deliveries in rows)
    assert ledger_positions(sqlite_url, group, topic) == {0: COUNT}
    assert kafka_committed(group, topic) == {0: COUNT}

    # The story does not.
    told = [d["divergence"] for d in consumer.summary()["divergences"]]
    shown = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    (run,) = orjson.loads(shown.stdout)
    partitions = [
        (p["divergence"], p["kafka_position"]) for p in run["consumer"]["partitions"]
    ]
    assert "behind" not in told, (
        f"{told.count('behind')} rejoins reported as 'the process died between "
        f"the two commits'; status shows {partitions}"
    )
