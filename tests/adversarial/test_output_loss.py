"""Adversarial: output failures that end in a "completed" run with rows missing."""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

from conftest import FLIGHTS_JOB, LEDGER, make_flights_zip, wait_until
from helpers import flights_args, flights_rows, run_cli, status_json

ROWS = 3000


def _checkpoints(ledger_file: Path) -> int:
    if not ledger_file.exists():
        return 0
    with sqlite3.connect(f"file:{ledger_file}?mode=ro", uri=True) as db:
        try:
            row = db.execute(
                "SELECT COUNT(*) FROM stored_events WHERE topic LIKE ?",
                ("%.BatchCheckpointed",),
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0])


def _failed_in_enrich(tmp_path: Path, url: str, output: str, cwd: Path) -> Path:
    source = make_flights_zip(tmp_path / "f.zip", ROWS, malformed=False)
    killed = run_cli(
        flights_args(source, output, "--batch-size", "500"),
        url,
        cwd,
        env={"LEDGER_FAULT": "after_checkpoint:enrich:1"},
    )
    assert killed.returncode == -9, killed.stderr
    return source


def test_output_deleted_between_attempts_completes_with_missing_rows(
    tmp_path: Path,
) -> None:
    """Guards against: deleting the output after a crash made the restart 'complete'
    with 0 of 2,982 rows loaded, and its summary count another step's rows.
    """
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    output = tmp_path / "out" / "flights.sqlite"
    source = _failed_in_enrich(tmp_path, url, str(output), tmp_path)

    # The whole output folder goes: the output and the run's staged rows.
    shutil.rmtree(output.parent)
    again = run_cli(flights_args(source, output, "--batch-size", "500"), url, tmp_path)

    # Refused and recorded, with the counts; the run is not completed.
    assert again.returncode == 1, again.stdout[-400:]
    assert "holds 0 records" in again.stderr, again.stderr
    assert "rows loaded" not in again.stdout
    run = status_json(url, tmp_path)[0]
    assert run["state"] == "failed"
    assert run["failure"]["error_class"] == "OutputLost"

    # The one command explain names starts over and loads every row.
    sentence = run_cli(["explain", run["run_id"]], url, tmp_path).stdout
    command = sentence.rsplit("`", 2)[-2]
    assert command.startswith("ledger run ")
    assert command.endswith("--new-run")
    redo = run_cli([*shlex.split(command)[1:], "--no-progress"], url, tmp_path)
    assert redo.returncode == 0, redo.stderr
    assert flights_rows(output) == 2982


def test_resume_from_other_directory_completes_with_missing_rows(
    tmp_path: Path,
) -> None:
    """Guards against: `ledger resume RUN` from another directory reopens a relative
    output there and completes with 0 rows.
    """
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    _failed_in_enrich(tmp_path, url, "out/flights.sqlite", tmp_path)
    run_id = status_json(url, tmp_path)[0]["run_id"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = run_cli(["resume", run_id[:8], "--no-progress"], url, elsewhere)
    loaded = max(
        flights_rows(tmp_path / "out" / "flights.sqlite"),
        flights_rows(elsewhere / "out" / "flights.sqlite"),
    )
    assert resumed.returncode != 0 or loaded == 2982, (resumed.stdout[-400:], loaded)


def test_output_deleted_while_running_is_reported_completed(tmp_path: Path) -> None:
    """Guards against: a WAL-mode output deleted mid-run is silently lost: the run
    completes with exit 0 and no output.
    """
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    source = make_flights_zip(tmp_path / "f.zip", 60000, malformed=False)
    output = tmp_path / "out" / "flights.sqlite"
    proc = subprocess.Popen(
        [*LEDGER, *flights_args(source, output, "--batch-size", "500")],
        cwd=tmp_path,
        env={**os.environ, "LEDGER_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Mid-run: the output exists and a few batches are checkpointed.
    wait_until(
        lambda: (
            proc.poll() is not None
            or (output.exists() and _checkpoints(tmp_path / "ledger.sqlite") >= 3)
        ),
        "three checkpoints",
        30,
    )
    assert proc.poll() is None, "the job ended before the output could be deleted"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{output}{suffix}").unlink(missing_ok=True)
    out, _err = proc.communicate(timeout=120)
    assert proc.returncode != 0 or flights_rows(output) > 0, (
        proc.returncode,
        out[-300:],
    )


def test_output_equal_to_ledger_wal_destroys_the_ledger(tmp_path: Path) -> None:
    """Guards against: `--param output=.ledger/ledger.sqlite-wal` is accepted and
    corrupts the whole ledger.
    """
    source = make_flights_zip(tmp_path / "f.zip", ROWS)
    first = run_cli(
        [
            "run",
            str(FLIGHTS_JOB),
            "--input",
            str(source),
            "--param",
            "output=out/a.sqlite",
            "--no-progress",
        ],
        "",
        tmp_path,
    )
    assert first.returncode == 0, first.stderr
    run_cli(
        [
            "run",
            str(FLIGHTS_JOB),
            "--input",
            str(source),
            "--param",
            "output=.ledger/ledger.sqlite-wal",
            "--no-progress",
        ],
        "",
        tmp_path,
    )
    status = run_cli(["status", "--json"], "", tmp_path)
    assert status.returncode == 0, status.stderr[-300:]


def test_output_in_memory_is_accepted_and_lost(tmp_path: Path) -> None:
    """Guards against: `--param output=:memory:` is accepted; the run completes and
    nothing is written anywhere.
    """
    source = make_flights_zip(tmp_path / "f.zip", ROWS)
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    result = run_cli(
        flights_args(source, ":memory:"),
        url,
        tmp_path,
    )
    assert result.returncode == 2, result.stdout[-300:]


def test_output_file_deleted_before_load_is_rebuilt_from_staging(
    tmp_path: Path,
) -> None:
    """Guards against: a resume that 'completes' without the rows of a deleted
    output file; with the staged rows intact, load writes every row again."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    output = tmp_path / "out" / "flights.sqlite"
    source = _failed_in_enrich(tmp_path, url, str(output), tmp_path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{output}{suffix}").unlink(missing_ok=True)
    again = run_cli(flights_args(source, output, "--batch-size", "500"), url, tmp_path)
    assert again.returncode == 0, again.stderr
    assert flights_rows(output) == 2982
    assert [p.name for p in output.parent.iterdir() if "staging" in p.name] == []
