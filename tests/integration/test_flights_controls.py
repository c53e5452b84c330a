"""The operator controls on the main job, the flights import, on PostgreSQL.

A live worker on the real table is paused at a batch boundary and goes on
when resumed; a failed run replays only its failed work; and a run whose
worker is gone is abandoned, then resumed by a new worker. Each ends with
the output holding one row per flight that is not quarantined.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import orjson
import pytest
from conftest import FLIGHTS_JOB, LEDGER, ledger_command, make_flights_zip, wait_until
from ledger_support import event_steps, run_statuses

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _loaded(output: Path) -> int:
    with sqlite3.connect(output) as db:
        return int(db.execute("SELECT COUNT(*) FROM flights").fetchone()[0])


def test_pause_and_resume_a_live_flights_import(
    tmp_path: Path, postgres_url: str
) -> None:
    source = make_flights_zip(tmp_path / "flights.zip", 100_000, malformed=False)
    output = tmp_path / "out" / "flights.sqlite"
    worker = subprocess.Popen(
        [*LEDGER, "run", str(FLIGHTS_JOB), "--input", str(source), "--batch-size",
         "1000", "--no-progress", "--param", f"output={output}"],
        cwd=tmp_path, env={**os.environ, "LEDGER_URL": postgres_url,
                           "LEDGER_PAUSE_POLL_SECONDS": "0.1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def checkpointed() -> str | None:
            runs = run_statuses(postgres_url, tmp_path)
            return (
                str(runs[0]["run_id"]) if runs and runs[0]["last_checkpoint"] else None
            )

        run_id = wait_until(checkpointed, "the first checkpoint", 120)
        paused = ledger_command(
            ["pause", run_id, "--reason", "warehouse maintenance", "--as", "gina"],
            url=postgres_url, cwd=tmp_path,
        )  # fmt: skip
        assert paused.returncode == 0, paused.stderr
        wait_until(
            lambda: run_statuses(postgres_url, tmp_path)[0]["state"] == "paused",
            "the flights worker to pause",
            120,
        )
        story = ledger_command(["explain", run_id], url=postgres_url, cwd=tmp_path)
        assert "is paused by gina (warehouse maintenance) on attempt 1" in story.stdout
        resumed = ledger_command(
            ["resume", run_id, "--reason", "done", "--as", "gina"],
            url=postgres_url, cwd=tmp_path,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()

    # One attempt, no batch begun while paused, every flight loaded once.
    names = [name for name, _ in event_steps(postgres_url, run_id)]
    paused_at, lifted_at = names.index("WorkerPaused"), names.index("PauseLifted")
    assert "BatchStarted" not in names[paused_at:lifted_at]
    assert names.count("AttemptStarted") == 1
    shown = ledger_command(
        ["history", run_id, "--json"], url=postgres_url, cwd=tmp_path
    )
    run = orjson.loads(shown.stdout)["run"]
    assert run["state"] == "completed"
    assert _loaded(output) == 100_000 - run["quarantined"]


def test_failed_only_and_abandon_on_a_failed_flights_import(
    tmp_path: Path, postgres_url: str
) -> None:
    # Enrich refuses its first batch holding an incomplete flight.
    source = make_flights_zip(tmp_path / "flights.zip", 3000, malformed=False)
    output = tmp_path / "out" / "flights.sqlite"
    failed = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(source), "--batch-size", "500",
         "--param", f"output={output}", "--param", "max_quarantine_ratio=0"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    run_id = str(run_statuses(postgres_url, tmp_path)[0]["run_id"])

    # An operator abandons it (its worker will not come back), then replays
    # only the failed work: from enrich's failed batch on.
    abandoned = ledger_command(
        ["abandon", run_id, "--reason", "the night shift gave up", "--as", "hal"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert abandoned.returncode == 0, abandoned.stderr
    before = event_steps(postgres_url, run_id)
    done = ledger_command(
        ["rerun", run_id, "--failed-only", "--reason", "incomplete flights "
         "reviewed", "--as", "hal", "--max-quarantine-ratio", "1", "--no-progress"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replay: from step enrich, batch 0" in done.stdout
    assert "promote: 0 quarantined records" in done.stdout

    # Extract was not read again; enrich and load were done once.
    again = event_steps(postgres_url, run_id)[len(before) :]
    assert {step for name, step in again if name == "BatchStarted"} == {
        "enrich",
        "load",
    }
    shown = ledger_command(
        ["history", run_id, "--json"], url=postgres_url, cwd=tmp_path
    )
    view = orjson.loads(shown.stdout)
    assert view["run"]["state"] == "completed"
    assert view["run"]["quarantined"] == 18
    assert _loaded(output) == 2982
    assert [a["action"] for a in view["run"]["actions"]] == ["abandon"]

    # The 18 incomplete flights now wait; --failed-only puts them through
    # the job's own code again, which rejects them again: still incomplete.
    promoted = ledger_command(
        ["rerun", run_id, "--failed-only", "--reason", "planes file updated"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.count("rejected again by step enrich") == 18
    assert _loaded(output) == 2982
    pending = ledger_command(
        ["quarantine", "list", "--run", run_id, "--json"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    records = orjson.loads(pending.stdout)["records"]
    assert len(records) == 18
    assert all(record["previous_id"] for record in records)

    # A rerun from a step the job does not have is refused.
    refused = ledger_command(
        ["rerun", run_id, "--from", "step:transform", "--reason", "x"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "its steps are extract, enrich, load" in refused.stderr
