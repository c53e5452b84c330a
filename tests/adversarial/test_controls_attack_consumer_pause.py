"""Adversarial: `ledger pause` of a live Kafka consumer on the real broker.

The README promises that a paused run's worker stops at its next batch
boundary. A consumer used to look for a pause only every
LEDGER_PAUSE_POLL_SECONDS, and began batches after the pause was recorded;
its batch start now refuses to begin one while a pause is in force.
"""

from __future__ import annotations

import sqlite3
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

from ledger.config import parse_ledger_url
from ledger.operations import lift_pause_of, pause_run

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _events(ledger_file: Path) -> list[tuple[str, str]]:
    """(stream id, event type) of every stored event, in log order."""
    if not ledger_file.exists():
        return []
    with sqlite3.connect(f"file:{ledger_file}?mode=ro", uri=True) as db:
        try:
            rows = db.execute(
                "SELECT originator_id, topic FROM stored_events ORDER BY rowid"
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    return [(str(o), t.rsplit(".", 1)[-1].rsplit(":", 1)[-1]) for o, t in rows]


def _stream_of(ledger_file: Path, event: str, at_least: int = 1) -> str | None:
    """The stream holding `event`, once it holds it `at_least` times."""
    found = [stream for stream, name in _events(ledger_file) if name == event]
    return found[0] if len(found) >= at_least else None


def test_paused_consumer_begins_no_batch_after_the_pause(tmp_path: Path) -> None:
    require_broker()
    ledger_file = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{ledger_file}"
    topic, group = new_names("pause-attack")
    create_topic(topic, 3)
    produce(topic, [{"n": n} for n in range(6000)], 3)
    consumer = ConsumerProcess(
        url=url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="a", folder=tmp_path, until_idle=3,
        env={"STREAM_SLOW_MS": "2", "STREAM_BATCH": "40",
             "LEDGER_PAUSE_POLL_SECONDS": "1"},
    )  # fmt: skip
    location = parse_ledger_url(url)
    try:
        run_id = wait_until(
            lambda: _stream_of(ledger_file, "MessagesCheckpointed", at_least=3),
            "the consumer to checkpoint a few batches",
        )
        pause_run(location, run_id, by="t", reason="hold")
        wait_until(
            lambda: _stream_of(ledger_file, "WorkerPaused"),
            "the consumer to record that it paused",
        )
        names = [name for stream, name in _events(ledger_file) if stream == run_id]
        lift_pause_of(location, run_id, by="t", reason="go")
        assert consumer.wait() == 0, consumer.tail()
    finally:
        if consumer.process.poll() is None:
            consumer.kill()

    # Nothing lost, nothing twice, pause or not.
    rows = sink_rows(tmp_path / "sink.sqlite")
    assert len(rows) == 6000
    assert max(row[3] for row in rows) == 1

    after_pause = names[names.index("PauseRequested") : names.index("WorkerPaused")]
    assert "MessagesStarted" not in after_pause, after_pause
