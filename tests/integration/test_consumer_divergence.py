"""The crash between the ledger's transaction and Kafka's commit.

The consumer dies right after a batch's checkpoint committed in the ledger
and before its offset reached Kafka. The restart seeks to the ledger's
position (not Kafka's older one), reports the divergence in its log, its
summary and `ledger status`, handles nothing twice, and leaves Kafka
agreeing with the ledger.
"""

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
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 1_000
BATCH = 200


def test_restart_after_crash_between_commits_seeks_to_ledger_and_reports(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("diverge")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(COUNT)], 1)
    sink = tmp_path / "sink.sqlite"
    common = {
        "url": sqlite_url, "topic": topic, "group": group, "sink": sink,
        "member": "diverge", "folder": tmp_path,
    }  # fmt: skip

    # Batches 0-2 reach the ledger; Kafka got the commit of batch 1 only.
    killed = ConsumerProcess(
        **common, env={"LEDGER_FAULT": "after_checkpoint:consume:2"}
    )
    assert killed.wait() == -9, killed.tail()
    assert ledger_positions(sqlite_url, group, topic) == {0: 3 * BATCH}
    assert kafka_committed(group, topic) == {0: 2 * BATCH}

    # The dead consumer's story names the one command that recovers it.
    shown = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    (dead,) = orjson.loads(shown.stdout)
    assert dead["state"] == "interrupted"
    story = ledger_command(["explain", dead["run_id"]], url=sqlite_url, cwd=tmp_path)
    assert "without recording an outcome" in story.stdout
    assert f"{topic}[0] at {3 * BATCH:,}" in story.stdout
    assert "--member diverge`" in story.stdout, story.stdout

    # An operator may declare that process gone for good; the member's next
    # start resumes the run all the same.
    given_up = ledger_command(
        ["abandon", dead["run_id"], "--reason", "host retired", "--as", "ops"],
        url=sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    assert given_up.returncode == 0, given_up.stderr
    story = ledger_command(["explain", dead["run_id"]], url=sqlite_url, cwd=tmp_path)
    assert "was abandoned on attempt 1 by ops (host retired)" in story.stdout
    assert "--member diverge`" in story.stdout, story.stdout

    # The restart starts from the ledger and says Kafka was behind.
    restarted = ConsumerProcess(**common, until_idle=1.5)
    assert restarted.wait() == 0, restarted.tail()
    diverged = restarted.logged("partition.diverged")
    assert [(d["ledger"], d["kafka"], d["divergence"]) for d in diverged] == [
        (3 * BATCH, 2 * BATCH, "behind")
    ]
    summary = restarted.summary()
    assert [d["divergence"] for d in summary["divergences"]] == ["behind"]

    # Nothing the ledger had recorded was handled again.
    rows = sink_rows(sink)
    assert sorted(n for _, _, n, _ in rows) == list(range(COUNT))
    assert {deliveries for *_, deliveries in rows} == {1}

    # Kafka agrees with the ledger again.
    ends = end_offsets(topic, 1)
    assert ledger_positions(sqlite_url, group, topic) == ends == {0: COUNT}
    assert kafka_committed(group, topic) == ends

    # `ledger status` shows the divergence found on assignment.
    shown = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    runs = orjson.loads(shown.stdout)
    latest = next(r for r in runs if r["run_id"] == summary["run_id"])
    (partition,) = latest["consumer"]["partitions"]
    assert partition["divergence"] == "behind"
    assert (partition["ledger_position"], partition["kafka_position"]) == (
        3 * BATCH,
        2 * BATCH,
    )
    assert partition["position"] == COUNT
