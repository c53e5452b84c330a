"""Poison messages: one that raises, one that kills the process, one the
job rejects. Each ends in quarantine (an event in the ledger and a copy in
the quarantine topic) and its partition moves on."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import ledger_command
from kafka_support import (
    ConsumerProcess,
    create_topic,
    end_offsets,
    kafka_committed,
    ledger_positions,
    new_names,
    produce,
    read_topic,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 2
COUNT = 400
POISON = {30: "reject", 101: "raise", 250: "kill"}


def test_poison_messages_end_in_quarantine_and_partitions_move_on(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("poison")
    create_topic(topic, PARTITIONS)
    values = [
        {"n": n, **({"poison": POISON[n]} if n in POISON else {})} for n in range(COUNT)
    ]
    placed = produce(topic, values, PARTITIONS)
    sink = tmp_path / "sink.sqlite"

    # The killer takes the process down inside a batch, then twice alone
    # (the policy allows two crashes while handled alone), so the fourth
    # start quarantines it and finishes.
    exits = []
    for _ in range(5):
        consumer = ConsumerProcess(
            url=sqlite_url, topic=topic, group=group, sink=sink,
            member="poison", folder=tmp_path, until_idle=1.5,
        )  # fmt: skip
        exits.append(consumer.wait())
        if exits[-1] == 0:
            break
    assert exits == [-9, -9, -9, 0], consumer.tail()

    # Every other message is in the sink, once.
    rows = sink_rows(sink)
    assert sorted(n for _, _, n, _ in rows) == sorted(set(range(COUNT)) - set(POISON))

    # The ledger quarantined all three, each with its cause.
    listed = ledger_command(
        ["quarantine", "list", "--json"], url=sqlite_url, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    quarantined = orjson.loads(listed.stdout)["records"]
    by_offset = {(q["detail"].split("@")[0], q["record"]): q for q in quarantined}
    expected = {
        (f"{topic}[{placed[n][0]}]", placed[n][1]): kind for n, kind in POISON.items()
    }
    assert set(by_offset) == set(expected)
    reasons = {expected[key]: q["reason"] for key, q in by_offset.items()}
    assert reasons == {
        "reject": "rejected",
        "raise": "handler-error",
        "kill": "crashed-worker",
    }
    raised = next(q for key, q in by_offset.items() if expected[key] == "raise")
    assert "ValueError" in raised["detail"]
    assert raised["payload"] == {"n": 101, "poison": "raise"}

    # Each was copied to the quarantine topic, with where it came from.
    copies = read_topic(f"{topic}.quarantine")
    assert len(copies) == len(POISON)
    for record in copies:
        headers = {name: value.decode() for name, value in record.headers}
        n = orjson.loads(record.value)["n"]
        assert headers["ledger.source.topic"] == topic
        assert int(headers["ledger.source.partition"]) == placed[n][0]
        assert int(headers["ledger.source.offset"]) == placed[n][1]
        assert headers["ledger.error.class"] == {
            "reject": "Reject", "raise": "ValueError", "kill": "WorkerCrashed",
        }[POISON[n]]  # fmt: skip
        assert int(headers["ledger.attempt"]) >= 1

    # Every partition moved past its poison: the ledger, Kafka and the
    # partitions' ends agree.
    ends = end_offsets(topic, PARTITIONS)
    assert ledger_positions(sqlite_url, group, topic) == ends
    assert kafka_committed(group, topic) == ends

    # The story says what happened, in one sentence.
    explained = ledger_command(["explain", consumer.summary()["run_id"]],
                               url=sqlite_url, cwd=tmp_path)  # fmt: skip
    assert "3 messages quarantined" in explained.stdout, explained.stdout
