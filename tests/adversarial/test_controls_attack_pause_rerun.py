"""Adversarial: operator controls (pause, resume, rerun) against live and
dead workers of the numbers job, as a user drives them from the CLI.

Each was a bug when found, and states what the README promises; the tests
now hold the fixes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import orjson
import pytest
from conftest import LEDGER, NUMBERS_JOB, wait_until, write_numbers
from helpers import run_cli, status_json

from ledger.config import parse_ledger_url
from ledger.operations import lift_pause_of, pause_run

pytestmark = pytest.mark.slow


def _event_names(ledger_file: Path) -> list[str]:
    """Every event's type, in log order (`Run.WorkerPaused` -> `WorkerPaused`)."""
    if not ledger_file.exists():
        return []
    with sqlite3.connect(f"file:{ledger_file}?mode=ro", uri=True) as db:
        try:
            rows = db.execute("SELECT topic FROM stored_events ORDER BY rowid")
            return [topic.rsplit(".", 1)[-1].rsplit(":", 1)[-1] for (topic,) in rows]
        except sqlite3.OperationalError:
            return []


def _start_worker(
    tmp_path: Path, url: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    source = write_numbers(tmp_path / "n.txt", 400)
    args = [
        *LEDGER, "run", str(NUMBERS_JOB), "--input", str(source),
        "--batch-size", "20", "--param", "record_ms=20",
        "--param", f"output={tmp_path / 'o.sqlite'}", "--no-progress",
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**os.environ, "LEDGER_URL": url, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _runs(url: str, cwd: Path) -> list[dict]:  # type: ignore[type-arg]
    """`status --json`, or nothing while the ledger is not created yet."""
    result = run_cli(["status", "--json"], url, cwd)
    return orjson.loads(result.stdout) if result.returncode == 0 else []


def _run_id(url: str, cwd: Path) -> str:
    runs = wait_until(lambda: _runs(url, cwd), "the run to be recorded")
    return str(runs[0]["run_id"])


def test_pause_lifted_and_asked_again_shows_the_worker_paused(
    tmp_path: Path,
) -> None:
    ledger_file = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{ledger_file}"
    worker = _start_worker(tmp_path, url, {"LEDGER_PAUSE_POLL_SECONDS": "3"})
    try:
        run_id = _run_id(url, tmp_path)
        wait_until(
            lambda: _event_names(ledger_file).count("BatchCheckpointed") >= 22,
            "the worker to be inside step store",
        )
        location = parse_ledger_url(url)
        pause_run(location, run_id, by="t", reason="first")
        wait_until(
            lambda: "WorkerPaused" in _event_names(ledger_file),
            "the worker to pause",
        )

        # Lifted and asked again between two of the worker's polls.
        lift_pause_of(location, run_id, by="t", reason="lift")
        pause_run(location, run_id, by="t", reason="again")

        # The worker never went on, so it is paused: status must say so.
        try:
            wait_until(
                lambda: status_json(url, tmp_path)[0]["state"] == "paused",
                "status to show the waiting worker as paused",
                timeout=8,
            )
        finally:
            lift_pause_of(location, run_id, by="t", reason="end")
            assert worker.wait(timeout=120) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_rerun_point_with_a_huge_batch_number_is_bad_input(tmp_path: Path) -> None:
    ledger_file = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{ledger_file}"
    source = write_numbers(tmp_path / "n.txt", 50)
    done = run_cli(
        ["run", str(NUMBERS_JOB), "--input", str(source), "--batch-size", "10",
         "--param", f"output={tmp_path / 'o.sqlite'}", "--no-progress"],
        url, tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = _run_id(url, tmp_path)
    before = len(_event_names(ledger_file))

    huge = "batch:" + "1" * 5000
    result = run_cli(
        ["rerun", run_id[:8], "--from", huge, "--reason", "t", "--dry-run"],
        url,
        tmp_path,
    )

    assert len(_event_names(ledger_file)) == before
    assert result.returncode == 2, result.stderr[-300:]
    assert "Traceback" not in result.stderr


def test_rerun_dry_run_and_rerun_of_a_paused_run_agree(tmp_path: Path) -> None:
    ledger_file = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{ledger_file}"
    source = write_numbers(tmp_path / "n.txt", 100)
    (tmp_path / "fail").touch()
    failed = run_cli(
        ["run", str(NUMBERS_JOB), "--input", str(source), "--batch-size", "10",
         "--param", f"output={tmp_path / 'o.sqlite'}", "--no-progress",
         "--param", f"fail_marker={tmp_path / 'fail'}", "--param", "fail_batch=3"],
        url, tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    (tmp_path / "fail").unlink()
    run_id = _run_id(url, tmp_path)
    paused = run_cli(["pause", run_id[:8], "--reason", "hold"], url, tmp_path)
    assert paused.returncode == 0, paused.stderr

    # No worker waits on it: the dry run shows the plan and records nothing,
    # and the rerun itself lifts the pause and goes through.
    before = _event_names(ledger_file)
    dry = run_cli(
        ["rerun", run_id[:8], "--from", "step:store", "--reason", "t", "--dry-run"],
        url,
        tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    assert _event_names(ledger_file) == before
    real = run_cli(
        ["rerun", run_id[:8], "--from", "step:store", "--reason", "t"], url, tmp_path
    )
    assert real.returncode == 0, real.stderr
    added = _event_names(ledger_file)[len(before) :]
    assert added[:2] == ["PauseLifted", "RunRewound"]
    assert added[-1] == "RunCompleted"


def test_rerun_after_kill_names_a_way_that_works(tmp_path: Path) -> None:
    ledger_file = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{ledger_file}"
    worker = _start_worker(tmp_path, url)
    run_id = _run_id(url, tmp_path)
    wait_until(
        lambda: _event_names(ledger_file).count("BatchCheckpointed") >= 22,
        "the worker to be inside step store",
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    result = run_cli(
        ["rerun", run_id[:8], "--from", "step:store", "--reason", "t"], url, tmp_path
    )

    # Either the dead worker's attempt is closed and the rerun goes on, or
    # the refusal names a command that gets the run to rest.
    assert result.returncode == 0 or "ledger abandon" in result.stderr, result.stderr


def test_rerun_does_not_count_quarantined_records_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    source = write_numbers(tmp_path / "n.txt", 60, bad=(5, 25, 45))
    args = [
        "run", str(NUMBERS_JOB), "--input", str(source), "--batch-size", "10",
        "--param", f"output={tmp_path / 'o.sqlite'}", "--no-progress",
    ]  # fmt: skip
    first = run_cli(args, url, tmp_path)
    assert first.returncode == 0, first.stderr
    run_id = _run_id(url, tmp_path)

    redo = run_cli(
        ["rerun", run_id[:8], "--from", "step:double", "--reason", "t",
         "--no-progress", "--json"],
        url, tmp_path,
    )  # fmt: skip
    assert redo.returncode == 0, redo.stderr

    # Three records wait in quarantine, as `status` says; so must the summary.
    assert status_json(url, tmp_path)[0]["quarantined"] == 3
    summary = orjson.loads(redo.stdout)
    assert sum(summary["quarantined_by_reason"].values()) == 3, summary
