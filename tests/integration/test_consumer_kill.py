"""Kill -9 the consumer again and again; nothing is lost or applied twice.

100,000 messages over three partitions, the ledger on PostgreSQL. The
consumer is killed at least ten times: at random moments after it made
progress, and at every failpoint of a batch, including the one between
the ledger's transaction and Kafka's commit. Each restart resumes from the
ledger. At the end the sink holds every message exactly once and the
ledger's positions equal Kafka's committed offsets.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from conftest import ledger_command, wait_until
from kafka_support import (
    ConsumerProcess,
    create_topic,
    end_offsets,
    kafka_committed,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

PARTITIONS = 3
COUNT = 100_000
RANDOM_KILLS = 8
FAILPOINTS = ("in_batch", "after_write", "in_checkpoint", "after_checkpoint")


def test_kill_nine_many_times_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    require_broker()
    topic, group = new_names("kill")
    create_topic(topic, PARTITIONS)
    produce(topic, [{"n": n} for n in range(COUNT)], PARTITIONS)
    sink = tmp_path / "sink.sqlite"
    chooser = random.Random(20261204)

    # A kill from outside looks exactly like a message that kills its
    # worker: with the default policy, two kills that land while the same
    # message is handled alone would quarantine it. That is the poison
    # test's business; here no message is poison, so the policy is lifted.
    policy = {"STREAM_MAX_CRASHES": "1000"}

    def start(env: dict[str, str] | None = None) -> ConsumerProcess:
        return ConsumerProcess(
            url=postgres_url, topic=topic, group=group, sink=sink,
            member="killed", folder=tmp_path, env={**policy, **(env or {})},
        )  # fmt: skip

    def progress() -> int:
        return sum(ledger_positions(postgres_url, group, topic).values())

    def batches_done() -> int:
        shown = ledger_command(["status", "--json"], url=postgres_url, cwd=tmp_path)
        runs = orjson.loads(shown.stdout)
        return int(runs[0]["batches_done"]) if runs else 0

    # Kills at random moments: once a random number of further messages
    # is checkpointed, while the consumer goes on working.
    kills = 0
    for _ in range(RANDOM_KILLS):
        target = progress() + chooser.randint(1, 3_000)
        consumer = start()
        wait_until(lambda target=target: progress() >= target, "a checkpoint", 90)
        consumer.kill()
        kills += 1

    # Kills at each failpoint of a batch, a few batches into the restart.
    for point in FAILPOINTS:
        batch = batches_done() + chooser.randint(1, 4)
        consumer = start({"LEDGER_FAULT": f"{point}:consume:{batch}"})
        assert consumer.wait() == -9, consumer.tail()
        kills += 1
    assert kills >= 10
    assert progress() < COUNT, "the kills came too late to interrupt anything"

    # The last start drains the topic and stops cleanly.
    final = ConsumerProcess(
        url=postgres_url, topic=topic, group=group, sink=sink,
        member="killed", folder=tmp_path, until_idle=2, env=policy,
    )  # fmt: skip
    assert final.wait(timeout=300) == 0, final.tail()

    # Every message's effect is in the sink exactly once; none is missing.
    rows = sink_rows(sink)
    numbers = [n for _, _, n, _ in rows]
    assert len(numbers) == COUNT
    assert set(numbers) == set(range(COUNT))

    # Some batches really were handled twice (a kill between the write and
    # the checkpoint), and the sink still holds them once.
    assert any(deliveries > 1 for *_, deliveries in rows)

    # The ledger, Kafka and the partitions' ends agree.
    ends = end_offsets(topic, PARTITIONS)
    assert ledger_positions(postgres_url, group, topic) == ends
    assert kafka_committed(group, topic) == ends

    # Every kill is in the run's history as a crashed attempt.
    history = ledger_command(
        ["history", final.summary()["run_id"], "--json"], url=postgres_url, cwd=tmp_path
    )
    attempts = orjson.loads(history.stdout)["attempts"]
    assert sum(a["outcome"] == "crashed" for a in attempts) == kills
    assert attempts[-1]["outcome"] == "stopped"

    # And nothing was quarantined.
    listed = ledger_command(["quarantine", "list", "--json"], url=postgres_url,
                            cwd=tmp_path)  # fmt: skip
    assert orjson.loads(listed.stdout)["records"] == []
