"""Pause and resume a live Kafka consumer, and keep an idle one's lease.

A paused consumer stops at a batch boundary, keeps its group membership
(its partitions are paused in the client, the poll goes on) and records
no batch until `ledger resume` lifts the pause; then it goes on from the
ledger's positions and every message is handled once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ledger_command, wait_until
from kafka_support import (
    ConsumerProcess,
    create_topic,
    end_offsets,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
)
from ledger_support import event_names, run_statuses

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.postgres]

PARTITIONS = 2
TIMING = {
    "LEDGER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "LEDGER_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "LEDGER_LEASE_SECONDS": "3",
    "LEDGER_PAUSE_POLL_SECONDS": "0.1",
    "STREAM_SLOW_MS": "2",
    "STREAM_BATCH": "100",
}


def test_pause_holds_a_live_consumer_and_resume_lets_it_drain(
    tmp_path: Path, postgres_url: str
) -> None:
    require_broker()
    topic, group = new_names("pause")
    create_topic(topic, PARTITIONS)
    produce(topic, [{"n": n} for n in range(3_000)], PARTITIONS)
    sink = tmp_path / "sink.sqlite"
    consumer = ConsumerProcess(
        url=postgres_url, topic=topic, group=group, sink=sink, member="m1",
        folder=tmp_path, until_idle=2.0, env=TIMING,
    )  # fmt: skip
    try:
        wait_until(
            lambda: sum(ledger_positions(postgres_url, group, topic).values()) >= 300,
            "a few checkpointed batches",
            90,
        )
        run_id = str(run_statuses(postgres_url, tmp_path)[0]["run_id"])
        paused = ledger_command(
            ["pause", run_id[:8], "--reason", "sink migration", "--as", "dana"],
            url=postgres_url, cwd=tmp_path,
        )  # fmt: skip
        assert paused.returncode == 0, paused.stderr
        wait_until(
            lambda: run_statuses(postgres_url, tmp_path)[0]["state"] == "paused",
            "the consumer to pause",
            60,
        )
        assert consumer.process.poll() is None, consumer.tail()
        story = ledger_command(["explain", run_id], url=postgres_url, cwd=tmp_path)
        assert f"(group {group}, member m1) is paused by dana (sink migration)" in (
            story.stdout
        )
        assert f"`ledger resume {run_id[:8]}` lets it go on." in story.stdout

        # More messages arrive while it is paused; it leaves them be.
        produce(topic, [{"n": n} for n in range(3_000, 4_000)], PARTITIONS)
        resumed = ledger_command(
            ["resume", run_id, "--reason", "migration done", "--as", "dana"],
            url=postgres_url, cwd=tmp_path,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert "goes on" in resumed.stdout
        assert consumer.wait(timeout=180) == 0, consumer.tail()
    finally:
        if consumer.process.poll() is None:
            consumer.kill()

    # Nothing was begun while paused; then everything was handled once.
    names = event_names(postgres_url, run_id)
    paused_at, lifted_at = names.index("WorkerPaused"), names.index("PauseLifted")
    assert "MessagesStarted" not in names[paused_at:lifted_at]
    assert names.count("AttemptStarted") == 1
    ends = end_offsets(topic, PARTITIONS)
    assert sum(ends.values()) == 4_000
    assert ledger_positions(postgres_url, group, topic) == ends
    rows = sink_rows(sink)
    assert len({(part, offset) for part, offset, _, _ in rows}) == 4_000


def test_an_idle_consumer_keeps_its_run_past_its_lease(
    tmp_path: Path, postgres_url: str
) -> None:
    require_broker()
    topic, group = new_names("idle-lease")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(10)], 1)
    sink = tmp_path / "sink.sqlite"
    common = {
        "url": postgres_url, "topic": topic, "group": group, "sink": sink,
        "folder": tmp_path, "env": TIMING,
    }  # fmt: skip
    consumer = ConsumerProcess(**common, member="idle")
    try:
        wait_until(
            lambda: ledger_positions(postgres_url, group, topic) == {0: 10},
            "the first messages to be checkpointed",
            90,
        )
        run_id = str(run_statuses(postgres_url, tmp_path)[0]["run_id"])

        # Idle for three leases: the heartbeat keeps the run, so a second
        # process of the same member is still refused.
        wait_until(
            lambda: event_names(postgres_url, run_id).count("LeaseRenewed") >= 3,
            "three heartbeats",
            60,
        )
        assert run_statuses(postgres_url, tmp_path)[0]["state"] == "running"
        second = ConsumerProcess(**common, member="idle")
        assert second.wait(timeout=60) == 2, second.tail()
        assert "held by a live worker" in second.tail()
    finally:
        consumer.process.terminate()
        consumer.wait(timeout=60)


def test_rerun_failed_only_promotes_a_stopped_consumers_quarantine(
    tmp_path: Path, postgres_url: str
) -> None:
    require_broker()
    topic, group = new_names("failed-only")
    create_topic(topic, 2)
    flaky_ones = (5, 17)
    produce(
        topic,
        [
            {"n": n, **({"poison": "flaky"} if n in flaky_ones else {})}
            for n in range(30)
        ],
        2,
    )
    flaky = tmp_path / "flaky"
    flaky.touch()
    sink = tmp_path / "sink.sqlite"
    env = {**TIMING, "STREAM_FLAKY_FILE": str(flaky)}
    consumer = ConsumerProcess(
        url=postgres_url, topic=topic, group=group, sink=sink, member="fo",
        folder=tmp_path, until_idle=1.5, env=env,
    )  # fmt: skip
    assert consumer.wait(timeout=120) == 0, consumer.tail()
    assert len(sink_rows(sink)) == 28
    run_id = str(run_statuses(postgres_url, tmp_path)[0]["run_id"])

    # The cause gone, only the quarantined messages go through again.
    flaky.unlink()
    before = event_names(postgres_url, run_id)
    done = ledger_command(
        ["rerun", run_id, "--failed-only", "--reason", "flaky dependency fixed"],
        url=postgres_url, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replay: the consumer's partitions go on from its positions" in done.stdout
    assert "promote: 2 quarantined records (2 handler-error)" in done.stdout
    assert event_names(postgres_url, run_id)[len(before) :] == ["RecordPromoted"] * 2
    rows = sink_rows(sink)
    assert len(rows) == 30
    assert len({(part, offset) for part, offset, _, _ in rows}) == 30

    # A consumer's positions never move back: a rerun from a point is
    # refused, and records nothing.
    before = event_names(postgres_url, run_id)
    refused = ledger_command(
        ["rerun", run_id, "--from", "batch:0", "--reason", "again"],
        url=postgres_url, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "is a Kafka consumer's run: its positions never move back" in (
        refused.stderr
    )
    assert event_names(postgres_url, run_id) == before
