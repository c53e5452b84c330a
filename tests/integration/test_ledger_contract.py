"""One contract, two stores: every test here runs on SQLite and PostgreSQL.

Runs, resumes, claims and the read side must behave the same whichever
store LEDGER_URL names.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from conftest import FLIGHTS_JOB, NUMBERS_JOB, wait_until, write_numbers

from ledger.config import LedgerLocation, parse_ledger_url
from ledger.errors import JobFailed, LedgerUnavailable, RunHeld, Superseded
from ledger.loader import load_job
from ledger.run import Run
from ledger.runtime import RunSummary, describe_input, resolve_params, run_job
from ledger.store import open_ledger, opened
from ledger.worker import current_worker, lease_until
from projections.access import open_read_database
from projections.database import ReadDatabase
from projections.explain import explain
from projections.runner import catch_up, rebuild
from projections.tables import TABLES
from projections.views import find_run, list_attempts, list_quarantine, list_runs


def _run(url: str, job_path: Path, source: Path, **params: Any) -> RunSummary:
    job = load_job(str(job_path))
    overrides = {name: str(value) for name, value in params.items()}
    with opened(parse_ledger_url(url)) as ledger:
        return run_job(
            ledger, job, str(job_path), describe_input(source),
            resolve_params(job, overrides),
        )  # fmt: skip


def _read(url: str, query: Any) -> Any:
    async def go() -> Any:
        db = await open_read_database(parse_ledger_url(url))
        try:
            await catch_up(db)
            return await query(db)
        finally:
            await db.close()

    return asyncio.run(go())


async def _dump(db: ReadDatabase) -> dict[str, list[tuple[Any, ...]]]:
    dump = {}
    for table in TABLES:
        rows = await db.fetch(f"SELECT * FROM {table}")
        dump[table] = sorted(tuple(str(v) for v in row.values()) for row in rows)
    return dump


def test_flights_run_and_read_side(
    ledger_url: str, small_flights: Path, tmp_path: Path
) -> None:
    summary = _run(
        ledger_url, FLIGHTS_JOB, small_flights, batch_size=700,
        output=tmp_path / "out.sqlite",
    )  # fmt: skip
    assert summary.status == "completed"

    async def query(db: ReadDatabase) -> Any:
        runs = await list_runs(db)
        total, records = await list_quarantine(db, "flights-import", limit=1000)
        return runs, total, records

    runs, total, records = _read(ledger_url, query)
    assert [r.run_id for r in runs] == [str(summary.run_id)]
    run = runs[0]

    # The read side agrees with what the worker counted.
    assert run.state == "completed"
    assert run.quarantined == total == sum(summary.quarantined_by_reason.values())
    assert run.quarantined_by_reason == summary.quarantined_by_reason
    assert {r.reason for r in records} == {"malformed", "incomplete"}
    assert run.counters["plane_unknown"] == summary.totals["plane_unknown"]
    assert [s.written for s in run.steps] == [
        summary.totals[f"{s}.written"] for s in ("extract", "enrich", "load")
    ]
    assert run.batches_done == summary.batches
    assert run.resume_point is None


def test_rebuild_gives_the_same_tables(ledger_url: str, tmp_path: Path) -> None:
    # Two runs, one failed then resumed, so every table has rows.
    numbers = write_numbers(tmp_path / "n.txt", 95, bad=(7, 50))
    marker = tmp_path / "fail"
    marker.touch()
    params = {"batch_size": 10, "output": tmp_path / "o.sqlite", "fail_marker": marker}
    with pytest.raises(JobFailed):
        _run(ledger_url, NUMBERS_JOB, numbers, **params)
    marker.unlink()
    _run(ledger_url, NUMBERS_JOB, numbers, **params)
    second = {**params, "output": tmp_path / "o2.sqlite"}
    _run(ledger_url, NUMBERS_JOB, write_numbers(tmp_path / "m.txt", 30), **second)

    async def incremental_then_rebuilt(db: ReadDatabase) -> Any:
        before = await _dump(db)
        await rebuild(db)
        return before, await _dump(db)

    before, after = _read(ledger_url, incremental_then_rebuilt)
    assert before == after
    assert len(before["proj_runs"]) == 2
    assert len(before["proj_attempts"]) == 3
    assert len(before["proj_quarantine"]) == 2


def test_failed_run_resumes_from_its_checkpoint(
    ledger_url: str, tmp_path: Path
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 100)
    marker = tmp_path / "fail"
    marker.touch()
    params = {
        "batch_size": 10, "output": tmp_path / "o.sqlite",
        "fail_marker": marker, "fail_step": "store", "fail_batch": 3,
    }  # fmt: skip
    with pytest.raises(JobFailed, match="planted failure in store"):
        _run(ledger_url, NUMBERS_JOB, numbers, **params)

    async def view(db: ReadDatabase) -> Any:
        runs = await list_runs(db, "numbers")
        return runs[0], await list_attempts(db, runs[0].run_id)

    run, attempts = _read(ledger_url, view)
    assert run.state == "failed"
    assert run.resume_point == {
        "step": "store", "batch": 3, "from_record": 31, "position": 30,
        "position_kind": "line",
    }  # fmt: skip
    sentence = explain(run, attempts)
    assert "failed on attempt 1 in step store, batch 3 with RuntimeError" in sentence
    assert "resume at step store, batch 3, from row 31" in sentence
    assert f"`ledger resume {run.run_id[:8]}`" in sentence

    # The same command, cause fixed: a second attempt, from batch 3 of store.
    marker.unlink()
    summary = _run(ledger_url, NUMBERS_JOB, numbers, **params)
    assert str(summary.run_id) == run.run_id
    assert summary.attempt == 2
    assert summary.resumed_from is not None
    assert (summary.resumed_from.step, summary.resumed_from.batch) == ("store", 3)

    run, attempts = _read(ledger_url, view)
    assert [a.outcome for a in attempts] == ["failed", "completed"]
    assert attempts[0].failed_step == "store"
    assert attempts[0].failed_batch == 3
    assert attempts[1].batches == 7  # only store's batches 3 to 9 were redone


def test_completed_input_is_not_redone_unless_asked(
    ledger_url: str, tmp_path: Path
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 20)
    params = {"batch_size": 5, "output": tmp_path / "o.sqlite"}
    first = _run(ledger_url, NUMBERS_JOB, numbers, **params)
    again = _run(ledger_url, NUMBERS_JOB, numbers, **params)
    assert again.already_completed
    assert again.run_id == first.run_id
    assert again.events_written == 0

    job = load_job(str(NUMBERS_JOB))
    with opened(parse_ledger_url(ledger_url)) as ledger:
        fresh = run_job(
            ledger, job, str(NUMBERS_JOB), describe_input(numbers),
            resolve_params(job, {k: str(v) for k, v in params.items()}),
            new_run=True,
        )  # fmt: skip
    assert fresh.run_id != first.run_id
    assert fresh.status == "completed"


def _start_attempt_for(
    location: LedgerLocation, run_id: UUID, worker: dict[str, Any]
) -> None:
    with opened(location) as ledger:
        run: Run = ledger.repository.get(run_id)
        run.record_crash(
            "test takes over", detected_by=worker
        ) if run.attempt_open else None
        run.start_attempt(worker, lease_until())
        ledger.save(run)


def test_live_worker_holds_the_run_and_a_stale_one_is_fenced(
    ledger_url: str, tmp_path: Path
) -> None:
    location = parse_ledger_url(ledger_url)
    numbers = write_numbers(tmp_path / "n.txt", 40)
    hold = tmp_path / "hold"
    hold.touch()
    params = {"batch_size": 10, "output": tmp_path / "o.sqlite", "hold_marker": hold}

    # A worker starts and waits inside its first `store` batch.
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["summary"] = _run(ledger_url, NUMBERS_JOB, numbers, **params)
        except Exception as error:
            outcome["error"] = error

    worker = threading.Thread(target=work)
    worker.start()
    run_id = _wait_for_state(ledger_url, "store", outcome)

    # While it is alive, another worker on the same input is refused.
    with pytest.raises(RunHeld, match="is alive"):
        _run(ledger_url, NUMBERS_JOB, numbers, **params)

    # A takeover (as after a lost node) supersedes it: its next append is
    # refused and nothing more of it is recorded.
    _start_attempt_for(location, run_id, {**current_worker(), "pid": 1})
    hold.unlink()
    worker.join(timeout=60)
    assert isinstance(outcome.get("error"), Superseded)

    async def view(db: ReadDatabase) -> Any:
        return await list_attempts(db, str(run_id))

    attempts = _read(ledger_url, view)
    assert [a.outcome for a in attempts] == ["crashed", "running"]


def _wait_for_state(url: str, step: str, outcome: dict[str, Any]) -> UUID:
    async def query(db: ReadDatabase) -> Any:
        return await list_runs(db, "numbers")

    def reached() -> UUID | None:
        if outcome:
            pytest.fail(f"the worker ended before step {step}: {outcome}")
        try:
            runs = _read(url, query)
        except LedgerUnavailable:
            runs = []  # the worker has not created the ledger yet
        if runs and runs[0].current_step == step and runs[0].current_batch == 0:
            return UUID(runs[0].run_id)
        return None

    return wait_until(reached, f"the worker to reach step {step}", 30)


def test_concurrent_projectors_apply_each_event_once(
    ledger_url: str, tmp_path: Path
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 300, bad=(3, 150, 299))
    _run(ledger_url, NUMBERS_JOB, numbers, batch_size=7, output=tmp_path / "o.sqlite")
    location = parse_ledger_url(ledger_url)

    async def race() -> Any:
        dbs = [await open_read_database(location) for _ in range(3)]
        try:
            applied = await asyncio.gather(*(catch_up(db, pass_size=5) for db in dbs))
            return applied, await _dump(dbs[0]), await list_runs(dbs[0])
        finally:
            for db in dbs:
                await db.close()

    applied, dump, runs = asyncio.run(race())
    with opened(location) as ledger:
        total_events = ledger.recorder.max_notification_id()
    assert sum(applied) == total_events
    assert runs[0].quarantined == 3
    assert runs[0].steps[0].records == 300
    assert len(dump["proj_quarantine"]) == 3


@pytest.mark.postgres
def test_gaps_in_notification_ids_are_stepped_over(
    postgres_url: str, tmp_path: Path
) -> None:
    import psycopg

    numbers = write_numbers(tmp_path / "n.txt", 30)
    params = {"batch_size": 10, "output": tmp_path / "o.sqlite"}
    _run(postgres_url, NUMBERS_JOB, numbers, **params)
    _read(postgres_url, catch_up)

    # Burn ids as rolled-back inserts do, then record another run.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for _ in range(25):
            conn.execute("SELECT nextval('ledger_events_notification_id_seq')")
    second = {**params, "output": tmp_path / "o2.sqlite"}
    _run(postgres_url, NUMBERS_JOB, write_numbers(tmp_path / "m.txt", 12), **second)

    async def query(db: ReadDatabase) -> Any:
        return await list_runs(db, "numbers")

    runs = _read(postgres_url, query)
    assert sorted(r.state for r in runs) == ["completed", "completed"]
    assert sorted(r.steps[1].written for r in runs) == [12, 30]


def test_sqlite_ledger_tolerates_gaps(tmp_path: Path) -> None:
    # The same events with ids spread apart project to the same tables.
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    numbers = write_numbers(tmp_path / "n.txt", 60, bad=(9,))
    _run(url, NUMBERS_JOB, numbers, batch_size=9, output=tmp_path / "o.sqlite")

    source = sqlite3.connect(tmp_path / "a.sqlite")
    spread = sqlite3.connect(tmp_path / "b.sqlite")
    spread.execute(
        "CREATE TABLE stored_events (originator_id TEXT, originator_version "
        "INTEGER, topic TEXT, state BLOB, PRIMARY KEY (originator_id, "
        "originator_version))"
    )
    rows = source.execute("SELECT rowid, * FROM stored_events ORDER BY rowid")
    with spread:
        for rowid, *rest in rows:
            spread.execute(
                "INSERT INTO stored_events VALUES (?, ?, ?, ?, ?)".replace(
                    "VALUES (?",
                    "(rowid, originator_id, originator_version, topic, "
                    "state) VALUES (?",
                ),
                (rowid * 7 + 3, *rest),
            )
    spread.close()
    source.close()

    async def dump(url: str) -> Any:
        db = await open_read_database(parse_ledger_url(url))
        try:
            await catch_up(db, pass_size=4)
            tables = await _dump(db)
            tables.pop("proj_position")
            return tables
        finally:
            await db.close()

    assert asyncio.run(dump(url)) == asyncio.run(
        dump(f"sqlite:///{tmp_path / 'b.sqlite'}")
    )


def test_explain_and_history_json_have_stable_fields(
    ledger_url: str, tmp_path: Path
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 25, bad=(4,))
    summary = _run(
        ledger_url, NUMBERS_JOB, numbers, batch_size=10, output=tmp_path / "o.sqlite"
    )

    async def query(db: ReadDatabase) -> Any:
        run = await find_run(db, str(summary.run_id)[:6])
        return run, await list_attempts(db, run.run_id)

    run, attempts = _read(ledger_url, query)
    fields = set(orjson.loads(orjson.dumps(run.as_dict())))
    assert {
        "run_id", "job", "state", "attempts", "last_checkpoint", "resume_point",
        "quarantined", "quarantined_by_reason", "steps", "input", "params",
    } <= fields  # fmt: skip
    assert set(attempts[0].as_dict()) >= {
        "attempt", "started_at", "ended_at", "outcome", "failed_step",
        "failed_batch", "error_class", "error_message", "input_sha256",
    }  # fmt: skip
    assert attempts[0].input_sha256 == describe_input(numbers).sha256
    assert explain(run, attempts).startswith(
        f"Run {run.run_id[:8]} of numbers completed on attempt 1"
    )


def test_open_ledger_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "ledger.sqlite"
    bogus.write_text("this is not a database" * 100)
    with pytest.raises(LedgerUnavailable, match="LEDGER_URL"):
        open_ledger(parse_ledger_url(f"sqlite:///{bogus}"))
    assert bogus.read_text().startswith("this is not a database")


def test_quarantine_lists_by_job_and_by_run(ledger_url: str, tmp_path: Path) -> None:
    first = _run(
        ledger_url, NUMBERS_JOB, write_numbers(tmp_path / "a.txt", 30, bad=(3, 9)),
        batch_size=10, output=tmp_path / "a.sqlite",
    )  # fmt: skip
    second = _run(
        ledger_url, NUMBERS_JOB, write_numbers(tmp_path / "b.txt", 30, bad=(17,)),
        batch_size=10, output=tmp_path / "b.sqlite",
    )  # fmt: skip

    async def query(db: ReadDatabase) -> Any:
        return (
            await list_quarantine(db, "numbers"),
            await list_quarantine(db, run_id=str(first.run_id)),
            await list_quarantine(db, "numbers", run_id=str(second.run_id)),
            await list_quarantine(db, "other-job"),
        )

    everything, of_first, of_second, none = _read(ledger_url, query)
    assert everything[0] == 3
    assert [r.record for r in of_first[1]] == [3, 9]
    assert [r.record for r in of_second[1]] == [17]
    assert none == (0, [])
