"""Quarantine decisions through the real `ledger` command, on both stores.

A record is shown in full, then discarded with who and why: history lists
the decision, the list shows it discarded, and status and explain count it
apart from what still waits. Decisions that make no sense append nothing
(the store's rows are counted before and after). Bulk discards count
first, act only when confirmed, and act on exactly what they counted. A
discard lands while a worker runs, which goes on and completes. A
consumer's quarantined message is shown and discarded the same way.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psycopg
import pytest
from conftest import (
    FLIGHTS_JOB,
    LEDGER,
    NUMBERS_JOB,
    ledger_command,
    wait_until,
    write_numbers,
)

from ledger.config import parse_ledger_url
from ledger.store import opened

BAD_LINES = (3, 17, 25)


def _stored_events(url: str) -> int:
    """Every row of the store's events table, read through the library."""
    count, start = 0, 1
    with opened(parse_ledger_url(url)) as ledger:
        while page := ledger.recorder.select_notifications(start, 1000):
            count += len(page)
            start = page[-1].id + 1
    return count


def _json(url: str, cwd: Path, *args: str) -> Any:
    shown = ledger_command([*args, "--json"], url=url, cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    return orjson.loads(shown.stdout)


def _numbers_run(tmp_path: Path, url: str) -> str:
    """A completed run of the numbers job with three records quarantined."""
    numbers = write_numbers(tmp_path / "n.txt", 40, bad=BAD_LINES)
    done = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--no-progress", "--param", f"output={tmp_path / 'out.sqlite'}", "--json"],
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id: str = orjson.loads(done.stdout)["run_id"]
    return run_id


def _no_terminal(
    args: list[str], url: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`ledger ARGS` with stdin that is not a terminal (nor anything else)."""
    return subprocess.run(
        [*LEDGER, *args], cwd=cwd, env={**os.environ, "LEDGER_URL": url},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def test_show_then_discard_one_record(tmp_path: Path, ledger_url: str) -> None:
    run_id = _numbers_run(tmp_path, ledger_url)
    listed = _json(ledger_url, tmp_path, "quarantine", "list")
    assert listed["total"] == len(BAD_LINES)
    record = next(r for r in listed["records"] if r["record"] == 17)
    quarantine_id = record["quarantine_id"]

    # Shown in full, by a unique prefix of its id.
    shown = _json(ledger_url, tmp_path, "quarantine", "show", quarantine_id[:8])
    assert shown == {
        "quarantine_id": quarantine_id, "run_id": run_id, "job": "numbers",
        "kind": "record", "step": "double", "batch": 1, "record": 17,
        "topic": None, "partition": None, "offset": None,
        "reason": "not_a_number", "detail": "'x17'", "attempt": 1,
        "payload": "x17", "state": "pending",
        "quarantined_at": record["quarantined_at"], "decision": None,
        "previous_id": None, "next_id": None, "promotions": [],
        "sealed_payload": {
            "state": "sealed", "wrapped": False, "destroyed_at": None,
            "destroyed_why": None,
        },
    }  # fmt: skip
    assert _json(ledger_url, tmp_path, "status")[0]["quarantined"] == 3

    # The decision, with who and why: one event.
    before = _stored_events(ledger_url)
    done = _json(
        ledger_url, tmp_path, "quarantine", "discard", quarantine_id[:8],
        "--reason", "typo in the export", "--as", "alice",
    )  # fmt: skip
    assert (done["action"], done["by"], done["quarantine_id"]) == (
        "discard", "alice", quarantine_id,
    )  # fmt: skip
    assert _stored_events(ledger_url) == before + 1

    # History lists it; the list shows it discarded; counts drop.
    history = _json(ledger_url, tmp_path, "history", run_id[:8])
    assert [
        (a["action"], a["by"], a["reason"], a["target"])
        for a in history["run"]["actions"]
    ] == [("discard", "alice", "typo in the export", quarantine_id)]
    text = ledger_command(["history", run_id], url=ledger_url, cwd=tmp_path)
    assert (
        f"discard of record {quarantine_id[:8]} by alice: typo in the export"
        in text.stdout
    )
    pending = _json(ledger_url, tmp_path, "quarantine", "list")
    assert sorted(r["record"] for r in pending["records"]) == [3, 25]
    discarded = _json(
        ledger_url, tmp_path, "quarantine", "list", "--state", "discarded"
    )
    assert [
        (r["record"], r["state"], r["decided_by"]) for r in discarded["records"]
    ] == [(17, "discarded", "alice")]
    shown = _json(ledger_url, tmp_path, "quarantine", "show", quarantine_id)
    assert shown["state"] == "discarded"
    assert (shown["decision"]["by"], shown["decision"]["reason"]) == (
        "alice", "typo in the export",
    )  # fmt: skip
    status = _json(ledger_url, tmp_path, "status")[0]
    assert (status["quarantined"], status["discarded"]) == (2, 1)
    story = ledger_command(["explain", run_id], url=ledger_url, cwd=tmp_path)
    assert "2 records quarantined (2 not_a_number) and 1 discarded" in story.stdout

    # Decisions that make no sense append nothing.
    before = _stored_events(ledger_url)
    again = ledger_command(
        ["quarantine", "discard", quarantine_id, "--reason", "twice", "--as", "bob"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 2
    assert "already discarded by alice" in again.stderr
    unknown = ledger_command(
        ["quarantine", "discard", "abcdef12", "--reason", "gone"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "no quarantined record matches 'abcdef12'" in unknown.stderr
    other = next(r for r in pending["records"])["quarantine_id"]
    blank = ledger_command(
        ["quarantine", "discard", other, "--reason", "   "],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert blank.returncode == 2
    assert "a reason is required: pass --reason TEXT" in blank.stderr
    bare = ledger_command(
        ["quarantine", "discard", other], url=ledger_url, cwd=tmp_path
    )
    assert bare.returncode == 2
    assert "--reason" in bare.stderr
    both = ledger_command(
        ["quarantine", "discard", other, "--all", "--reason", "x"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert both.returncode == 2
    assert "not both" in both.stderr
    assert _stored_events(ledger_url) == before


def test_bulk_discard_counts_confirms_and_acts_on_the_match(
    tmp_path: Path, ledger_url: str, small_flights: Path
) -> None:
    # The flights job quarantines 2 malformed and 18 incomplete rows.
    done = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(small_flights), "--no-progress",
         "--param", f"output={tmp_path / 'flights.sqlite'}"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _numbers_run(tmp_path, ledger_url)
    before = _stored_events(ledger_url)
    malformed = ["quarantine", "discard", "--all", "--job", "flights-import",
                 "--reason-is", "malformed", "--since", "1h"]  # fmt: skip

    # A dry run counts, and appends nothing.
    dry = ledger_command([*malformed, "--dry-run"], url=ledger_url, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "2 pending records would be discarded (dry run): 2 malformed" in dry.stdout

    # Without --yes, and no terminal to ask on: refused, nothing appended.
    unasked = _no_terminal([*malformed, "--reason", "bad rows"], ledger_url, tmp_path)
    assert unasked.returncode == 2
    assert "2 pending records match: 2 malformed" in unasked.stdout
    assert "pass --yes" in unasked.stderr
    assert _stored_events(ledger_url) == before

    # Nothing quarantined before 2000 matches.
    old = ledger_command(
        [*malformed, "--until", "2000-01-01", "--reason", "old", "--yes"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert old.returncode == 0, old.stderr
    assert "no pending records match" in old.stdout

    # Confirmed: exactly the matching pending records, and nothing else.
    result = ledger_command(
        [*malformed, "--reason", "bad rows", "--as", "carol", "--yes", "--json"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bulk = orjson.loads(result.stdout)
    assert (bulk["matched"], len(bulk["decided"]), bulk["skipped"]) == (2, 2, [])
    assert _stored_events(ledger_url) == before + 2

    flights = _json(ledger_url, tmp_path, "quarantine", "list", "flights-import")
    assert flights["total"] == 18
    assert {r["reason"] for r in flights["records"]} == {"incomplete"}
    gone = _json(ledger_url, tmp_path, "quarantine", "list", "--state", "discarded")
    assert sorted(r["quarantine_id"] for r in gone["records"]) == sorted(
        bulk["decided"]
    )
    assert {(r["reason"], r["decided_by"]) for r in gone["records"]} == {
        ("malformed", "carol")
    }
    numbers = _json(ledger_url, tmp_path, "quarantine", "list", "numbers")
    assert numbers["total"] == len(BAD_LINES)

    # The same command again finds nothing left to discard.
    again = ledger_command(
        [*malformed, "--reason", "bad rows", "--yes"], url=ledger_url, cwd=tmp_path
    )
    assert again.returncode == 0
    assert "no pending records match" in again.stdout
    assert _stored_events(ledger_url) == before + 2


def test_a_discard_lands_while_a_worker_runs(tmp_path: Path, ledger_url: str) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 200, bad=BAD_LINES)
    worker = subprocess.Popen(
        [*LEDGER, "run", str(NUMBERS_JOB), "--input", str(numbers),
         "--batch-size", "10", "--no-progress", "--param", "record_ms=20",
         "--param", f"output={tmp_path / 'out.sqlite'}"],
        cwd=tmp_path, env={**os.environ, "LEDGER_URL": ledger_url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # The double step quarantined its records; store is under way.
        def in_store() -> list[str]:
            shown = ledger_command(
                ["quarantine", "list", "--json"], url=ledger_url, cwd=tmp_path
            )
            runs = ledger_command(["status", "--json"], url=ledger_url, cwd=tmp_path)
            if shown.returncode or runs.returncode:
                return []
            state = orjson.loads(runs.stdout)
            if not state or (state[0]["state"], state[0]["current_step"]) != (
                "running", "store",
            ):  # fmt: skip
                return []
            return [r["quarantine_id"] for r in orjson.loads(shown.stdout)["records"]]

        ids = wait_until(in_store, "the worker to be in step store", 60)
        run_id = _json(ledger_url, tmp_path, "status")[0]["run_id"]
        done = ledger_command(
            ["quarantine", "discard", ids[0], "--reason", "typo", "--as", "alice"],
            url=ledger_url, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        _, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()

    # The worker went on past the decision and completed; the decision stands.
    assert worker.returncode == 0, err
    names = _event_names(ledger_url, run_id)
    assert names[-1] == "RunCompleted"
    assert "BatchCheckpointed" in names[names.index("RecordDiscarded") :]
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[0])
    assert (shown["state"], shown["decision"]["by"]) == ("discarded", "alice")
    status = _json(ledger_url, tmp_path, "history", run_id)["run"]
    assert (status["state"], status["quarantined"], status["discarded"]) == (
        "completed", len(BAD_LINES) - 1, 1,
    )  # fmt: skip


def _event_names(url: str, run_id: str) -> list[str]:
    """The run's stored events by name, without a live worker's heartbeats."""
    with opened(parse_ledger_url(url)) as ledger:
        events = ledger.repository.event_store.get(UUID(run_id))
        names = [type(event).__name__ for event in events]
    return [name for name in names if name != "LeaseRenewed"]


def _drop_decision_columns(url: str) -> None:
    """Makes the read tables look as a ledger made before decisions left
    them: no decision or source columns, records stored as `quarantined`."""
    location = parse_ledger_url(url)
    statements = [
        *(f"ALTER TABLE proj_quarantine DROP COLUMN {column}"
          for column in ("src_topic", "src_partition", "src_offset",
                         "decided_by", "decided_reason", "decided_at",
                         "previous_id", "next_id")),
        "ALTER TABLE proj_actions DROP COLUMN target",
        "UPDATE proj_quarantine SET state = 'quarantined'",
    ]  # fmt: skip
    if location.sqlite_path is not None:
        import sqlite3

        with sqlite3.connect(location.sqlite_path) as conn:
            for statement in statements:
                conn.execute(statement)
        return
    with psycopg.connect(url) as conn:
        for statement in statements:
            conn.execute(statement)


def test_read_tables_of_an_older_ledger_are_upgraded(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id = _numbers_run(tmp_path, ledger_url)
    _drop_decision_columns(ledger_url)

    # The next read command adds the columns; the records read as pending.
    listed = _json(ledger_url, tmp_path, "quarantine", "list")
    assert [r["state"] for r in listed["records"]] == ["pending"] * len(BAD_LINES)
    first = listed["records"][0]["quarantine_id"]
    done = ledger_command(
        ["quarantine", "discard", first, "--reason", "old ledger", "--as", "dave"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        _json(ledger_url, tmp_path, "quarantine", "show", first)["decision"]["by"]
        == "dave"
    )

    # A rebuild from the log gives the same answer.
    rebuilt = ledger_command(["project", "--rebuild"], url=ledger_url, cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    status = _json(ledger_url, tmp_path, "history", run_id)["run"]
    assert (status["quarantined"], status["discarded"]) == (2, 1)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.postgres
def test_a_consumer_message_is_shown_and_discarded(
    tmp_path: Path, postgres_url: str
) -> None:
    from kafka_support import (
        ConsumerProcess,
        create_topic,
        new_names,
        produce,
        require_broker,
    )

    require_broker()
    topic, group = new_names("decide")
    create_topic(topic, 2)
    poison = {10: "reject", 31: "raise"}
    values = [
        {"n": n, **({"poison": poison[n]} if n in poison else {})} for n in range(60)
    ]
    placed = produce(topic, values, 2)
    consumer = ConsumerProcess(
        url=postgres_url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="decider", folder=tmp_path, until_idle=1.5,
    )  # fmt: skip
    assert consumer.wait() == 0, consumer.tail()
    run_id = consumer.summary()["run_id"]

    # The rejected message, shown with where it came from.
    listed = _json(postgres_url, tmp_path, "quarantine", "list")
    assert listed["total"] == 2
    partition, offset = placed[10]
    record = next(r for r in listed["records"] if r["reason"] == "rejected")
    shown = _json(postgres_url, tmp_path, "quarantine", "show", record["quarantine_id"])
    assert (shown["kind"], shown["run_id"], shown["job"]) == (
        "message", run_id, "stream-numbers",
    )  # fmt: skip
    assert (shown["topic"], shown["partition"], shown["offset"]) == (
        topic, partition, offset,
    )  # fmt: skip
    assert shown["payload"] == {"n": 10, "poison": "reject"}
    assert (shown["state"], shown["decision"]) == ("pending", None)
    text = ledger_command(
        ["quarantine", "show", record["quarantine_id"][:8]],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert f"topic {topic}, partition {partition}, offset {offset}" in text.stdout

    # Discarded: one event; it no longer waits; the story says so.
    before = _stored_events(postgres_url)
    done = ledger_command(
        ["quarantine", "discard", record["quarantine_id"], "--reason",
         "marked bad upstream", "--as", "erin"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{topic}[{partition}]@{offset}" in done.stdout
    assert _stored_events(postgres_url) == before + 1
    pending = _json(postgres_url, tmp_path, "quarantine", "list")
    assert [r["reason"] for r in pending["records"]] == ["handler-error"]
    story = ledger_command(["explain", run_id], url=postgres_url, cwd=tmp_path)
    assert "1 message quarantined (1 handler-error) and 1 discarded" in story.stdout

    again = ledger_command(
        ["quarantine", "discard", record["quarantine_id"], "--reason", "again"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 2
    assert "already discarded by erin" in again.stderr
    assert _stored_events(postgres_url) == before + 1
