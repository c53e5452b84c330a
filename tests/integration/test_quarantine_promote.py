"""Promotions through the real `ledger` command, on both stores.

A promoted record goes through its job's own code again. While the cause
remains, the job rejects it again: the old record is settled as promoted
and a new pending one, named after its lineage, takes its place. Once
the cause is fixed (the numbers job's lenient marker), the new record is
written to the job's output. Refusals (already promoted, discarded,
unknown) append nothing: the store's rows are counted before and after.
Bulk promotions count first and act on exactly what they counted.

The flights job's records are promoted after its run completed: a
malformed row is read again from the input file, an incomplete one
(whose staging is gone) from its whole payload; both are rejected again.
A consumer's message that failed while a file existed is fetched again
from Kafka once the file is gone and written to the sink once; one that
retention took from its topic is promoted from its quarantine copy.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

import orjson
import pytest
from conftest import (
    FLIGHTS_JOB,
    LEDGER,
    MALFORMED_ROWS,
    NUMBERS_JOB,
    ledger_command,
    write_numbers,
)

from ledger.config import parse_ledger_url
from ledger.store import opened

BAD_LINES = (3, 17, 25, 33)


def _stored_events(url: str) -> int:
    """Every row of the store's events table, read through the library."""
    count, start = 0, 1
    with opened(parse_ledger_url(url)) as ledger:
        while page := ledger.recorder.select_notifications(start, 1000):
            count += len(page)
            start = page[-1].id + 1
    return count


def _json(url: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    shown = ledger_command([*args, "--json"], url=url, cwd=cwd, env=env)
    assert shown.returncode == 0, shown.stderr
    return orjson.loads(shown.stdout)


def _numbers_run(tmp_path: Path, url: str, name: str, lines: int = 40) -> str:
    """A completed run of the numbers job with its bad lines quarantined;
    the lenient marker (`tmp_path / "lenient"`) is its fix, once made."""
    numbers = write_numbers(tmp_path / f"{name}.txt", lines, bad=BAD_LINES)
    done = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--no-progress", "--param", f"output={tmp_path / f'{name}.sqlite'}",
         "--param", f"lenient_marker={tmp_path / 'lenient'}", "--json"],
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id: str = orjson.loads(done.stdout)["run_id"]
    return run_id


def _rows(path: Path, table: str) -> dict[int, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute(f"SELECT line, value FROM {table}").fetchall())


def _pending(url: str, cwd: Path, run_id: str) -> list[dict[str, Any]]:
    listed = _json(url, cwd, "quarantine", "list", "--run", run_id)
    records: list[dict[str, Any]] = listed["records"]
    return records


def test_promote_rejected_again_then_written_and_refusals(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id = _numbers_run(tmp_path, ledger_url, "n")
    records = {
        r["record"]: r["quarantine_id"] for r in _pending(ledger_url, tmp_path, run_id)
    }
    assert sorted(records) == list(BAD_LINES)
    old = records[17]

    # While the cause remains, the job's code rejects it again.
    before = _stored_events(ledger_url)
    again = ledger_command(
        ["quarantine", "promote", old[:8], "--reason", "retry", "--as", "alice"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    new = str(uuid5(UUID(run_id), f"{old}:promotion:1"))
    assert (
        f"promoted by alice (promotion 1): rejected again by step double as "
        f"not_a_number: 'x17'; quarantined as {new}"
    ) in again.stdout
    assert _stored_events(ledger_url) == before + 2

    # The old record is settled; the new one waits, with its lineage.
    shown = _json(ledger_url, tmp_path, "quarantine", "show", old)
    assert (shown["state"], shown["next_id"], shown["decision"]["by"]) == (
        "promoted", new, "alice",
    )  # fmt: skip
    assert [p["by"] for p in shown["promotions"]] == ["alice"]
    assert "rejected again by step double" in shown["promotions"][0]["reason"]
    fresh = _json(ledger_url, tmp_path, "quarantine", "show", new)
    assert (fresh["state"], fresh["previous_id"], fresh["step"], fresh["batch"]) == (
        "pending", old, "double", 1,
    )  # fmt: skip
    assert (fresh["record"], fresh["reason"], fresh["payload"]) == (
        17, "not_a_number", "x17",
    )  # fmt: skip
    pending = _pending(ledger_url, tmp_path, run_id)
    assert {r["quarantine_id"]: r["previous_id"] for r in pending} == {
        records[3]: None, records[25]: None, records[33]: None, new: old,
    }  # fmt: skip
    text = ledger_command(["quarantine", "show", new], url=ledger_url, cwd=tmp_path)
    assert f"quarantined again when {old} was promoted" in text.stdout

    # The cause fixed: the new record is written, through every later step.
    (tmp_path / "lenient").touch()
    written = _json(
        ledger_url, tmp_path, "quarantine", "promote", new[:8], "--as", "bob"
    )
    assert (written["outcome"], written["step"], written["written"]) == (
        "written", "store", 2,
    )  # fmt: skip
    assert (written["promotion"], written["reason"]) == (1, "promoted")
    assert written["message"].endswith("written by step store")
    assert _rows(tmp_path / "n.sqlite", "result")[17] == 34
    assert _rows(tmp_path / "n.sqlite", "staged")[17] == 34
    history = _json(ledger_url, tmp_path, "history", run_id)["run"]["actions"]
    assert [(a["action"], a["by"], a["target"]) for a in history] == [
        ("promote", "alice", old), ("promote", "bob", new),
    ]  # fmt: skip

    # Refusals append nothing.
    before = _stored_events(ledger_url)
    twice = ledger_command(["quarantine", "promote", new], url=ledger_url, cwd=tmp_path)
    assert twice.returncode == 2
    assert "is already promoted by bob" in twice.stderr
    discarded = ledger_command(
        ["quarantine", "discard", records[3], "--reason", "typo", "--as", "carol"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert discarded.returncode == 0, discarded.stderr
    before += 1
    refused = ledger_command(
        ["quarantine", "promote", records[3]], url=ledger_url, cwd=tmp_path
    )
    assert refused.returncode == 2
    assert "was discarded by carol (typo)" in refused.stderr
    unknown = ledger_command(
        ["quarantine", "promote", "abcdef12"], url=ledger_url, cwd=tmp_path
    )
    assert unknown.returncode == 2
    assert "no quarantined record matches 'abcdef12'" in unknown.stderr
    both = ledger_command(
        ["quarantine", "promote", records[25], "--all"], url=ledger_url, cwd=tmp_path
    )
    assert both.returncode == 2
    assert "not both" in both.stderr
    assert _stored_events(ledger_url) == before


def _no_terminal(
    args: list[str], url: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`ledger ARGS` with stdin that is not a terminal (nor anything else)."""
    return subprocess.run(
        [*LEDGER, *args], cwd=cwd, env={**os.environ, "LEDGER_URL": url},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def test_bulk_promote_counts_confirms_and_acts_on_the_match(
    tmp_path: Path, ledger_url: str
) -> None:
    first = _numbers_run(tmp_path, ledger_url, "n")
    other = _numbers_run(tmp_path, ledger_url, "m", lines=30)
    (tmp_path / "lenient").touch()
    before = _stored_events(ledger_url)
    bulk = ["quarantine", "promote", "--all", "--run", first[:8],
            "--reason-is", "not_a_number"]  # fmt: skip

    # A dry run counts, and appends nothing.
    dry = ledger_command([*bulk, "--dry-run"], url=ledger_url, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "4 pending records would be promoted (dry run): 4 not_a_number" in (
        dry.stdout
    )

    # Without --yes, and no terminal to ask on: refused, nothing appended.
    unasked = _no_terminal(bulk, ledger_url, tmp_path)
    assert unasked.returncode == 2
    assert "pass --yes" in unasked.stderr
    assert _stored_events(ledger_url) == before

    # Confirmed: exactly the matching pending records, each written.
    done = ledger_command(
        [*bulk, "--reason", "parser fixed", "--as", "dave", "--yes", "--json"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert (result["matched"], len(result["decided"]), result["skipped"]) == (
        4, 4, [],
    )  # fmt: skip
    assert {r["outcome"] for r in result["results"]} == {"written"}
    assert _stored_events(ledger_url) == before + 4
    assert _pending(ledger_url, tmp_path, first) == []
    assert sorted(r["record"] for r in _pending(ledger_url, tmp_path, other)) == [
        3, 17, 25,
    ]  # fmt: skip
    stored = _rows(tmp_path / "n.sqlite", "result")
    assert [stored[line] for line in BAD_LINES] == [2 * line for line in BAD_LINES]

    # Nothing is left to promote in that run.
    again = ledger_command([*bulk, "--yes"], url=ledger_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "no pending records match" in again.stdout
    assert _stored_events(ledger_url) == before + 4


@pytest.mark.postgres
def test_flights_records_are_rejected_again_with_their_lineage(
    tmp_path: Path, postgres_url: str, small_flights: Path
) -> None:
    output = tmp_path / "flights.sqlite"
    done = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(small_flights), "--no-progress",
         "--param", f"output={output}"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = _json(postgres_url, tmp_path, "quarantine", "list")["records"]
    assert sorted(r["record"] for r in listed if r["reason"] == "malformed") == (
        sorted(MALFORMED_ROWS)
    )
    malformed = next(r for r in listed if r["record"] == 101)
    incomplete = next(r for r in listed if r["reason"] == "incomplete")

    # extract reads the row again from the input file: still malformed.
    extract = ledger_command(
        ["quarantine", "promote", malformed["quarantine_id"], "--as", "erin"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert extract.returncode == 0, extract.stderr
    assert (
        "rejected again by step extract as malformed: expected 19 columns, "
        "found 17; quarantined as "
    ) in extract.stdout

    # enrich's staging is gone with the completed run: its payload, whole,
    # stands in, and the flight is still incomplete.
    enrich = _json(
        postgres_url, tmp_path, "quarantine", "promote",
        incomplete["quarantine_id"], "--as", "erin",
    )  # fmt: skip
    assert (enrich["outcome"], enrich["step"], enrich["error_class"]) == (
        "rejected", "enrich", "Reject",
    )  # fmt: skip
    assert enrich["detail"].startswith("incomplete: departed at ")
    assert (
        "rejected again by step enrich as incomplete: departed at"
        in (enrich["message"])
    )

    # Both wait again, each naming the record it came from.
    pending = _json(postgres_url, tmp_path, "quarantine", "list", "--limit", "50")
    again = {r["previous_id"]: r for r in pending["records"] if r["previous_id"]}
    assert set(again) == {malformed["quarantine_id"], incomplete["quarantine_id"]}
    parsed = again[malformed["quarantine_id"]]
    assert (parsed["step"], parsed["reason"], parsed["record"]) == (
        "extract", "malformed", 101,
    )  # fmt: skip
    requarantined = again[incomplete["quarantine_id"]]
    assert (requarantined["step"], requarantined["record"]) == (
        "enrich", incomplete["record"],
    )  # fmt: skip
    assert requarantined["quarantine_id"] == enrich["requarantined_as"]
    assert pending["total"] == 20

    # The completed run's job tidied its staging again when it closed.
    assert list(tmp_path.glob("flights.sqlite.staging-*")) == []


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.postgres
def test_a_consumer_message_is_fetched_again_and_written_once(
    tmp_path: Path, postgres_url: str
) -> None:
    from kafka_support import (
        BOOTSTRAP,
        ConsumerProcess,
        create_topic,
        new_names,
        produce,
        require_broker,
        sink_rows,
    )

    require_broker()
    topic, group = new_names("promote")
    create_topic(topic, 2)
    flaky_ones = (11, 20)
    values = [
        {"n": n, **({"poison": "flaky"} if n in flaky_ones else {})} for n in range(40)
    ]
    placed = produce(topic, values, 2)
    flaky = tmp_path / "flaky"
    flaky.touch()
    sink = tmp_path / "sink.sqlite"
    env = {"STREAM_FLAKY_FILE": str(flaky)}
    consumer = ConsumerProcess(
        url=postgres_url, topic=topic, group=group, sink=sink, member="promoter",
        folder=tmp_path, until_idle=1.5, env=env,
    )  # fmt: skip
    assert consumer.wait() == 0, consumer.tail()

    # Quarantined after its retries; the sink holds every other message.
    listed = _json(postgres_url, tmp_path, "quarantine", "list")["records"]
    ids = {r["record"]: r["quarantine_id"] for r in listed}
    assert sorted((r["reason"], r["record"]) for r in listed) == sorted(
        ("handler-error", placed[n][1]) for n in flaky_ones
    )
    assert len(sink_rows(sink)) == 38
    partition, offset = placed[11]
    assert (partition, offset) not in {(p, o) for p, o, _, _ in sink_rows(sink)}

    # The cause gone, the message is fetched again and written once.
    flaky.unlink()
    promoted = _json(
        postgres_url, tmp_path, "quarantine", "promote", ids[offset],
        "--bootstrap-servers", BOOTSTRAP, "--as", "frank", env=env,
    )  # fmt: skip
    assert (promoted["outcome"], promoted["step"], promoted["written"]) == (
        "written", "consume", 1,
    )  # fmt: skip
    assert f"{topic}[{partition}]@{offset}" in promoted["message"]
    rows = [row for row in sink_rows(sink) if row[:2] == (partition, offset)]
    assert rows == [(partition, offset, 11, 1)]
    shown = _json(postgres_url, tmp_path, "quarantine", "show", ids[offset])
    assert (shown["state"], shown["decision"]["by"]) == ("promoted", "frank")

    # A message retention took from its topic is promoted from its copy in
    # the quarantine topic, under its own topic, partition and offset.
    partition, offset = placed[20]
    _delete_records(topic, partition, offset + 1)
    copied = _json(
        postgres_url, tmp_path, "quarantine", "promote", ids[offset],
        "--bootstrap-servers", BOOTSTRAP, env=env,
    )  # fmt: skip
    assert copied["outcome"] == "written", copied
    rows = [row for row in sink_rows(sink) if row[:2] == (partition, offset)]
    assert rows == [(partition, offset, 20, 1)]
    assert len(sink_rows(sink)) == 40


def _delete_records(topic: str, partition: int, before: int) -> None:
    """What retention does: the partition's records before `before` go."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.records_to_delete import RecordsToDelete
    from aiokafka.structs import TopicPartition
    from kafka_support import BOOTSTRAP

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            await admin.delete_records(
                {TopicPartition(topic, partition): RecordsToDelete(before)}
            )
        finally:
            await admin.close()

    asyncio.run(delete())
