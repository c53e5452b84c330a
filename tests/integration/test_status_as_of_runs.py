"""`ledger status JOB --as-of TIME` at a moment when several runs exist.

At the moment: one run had completed (a record of it is discarded later),
one had failed, one was live (its worker held in its first `store`
batch; asked to pause later, it dies before it can), and one more starts
afterwards. The answer must name the three
that had started, each as it stood then; it reads the failed one from
the read tables (nothing of it was recorded later) and folds the others
from their events. At many moments of the job's history, that answer
must equal the one that folds every run from its events.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from conftest import LEDGER, NUMBERS_JOB, ledger_command, wait_until, write_numbers
from ledger_support import run_events

from ledger.as_of import plan_status_as_of, status_as_of
from ledger.config import parse_ledger_url
from projections.access import read


def _run(url: str, folder: Path, name: str, *extra: str) -> tuple[int, str]:
    numbers = write_numbers(folder / f"{name}.txt", 60, bad=(5,))
    done = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--no-progress", "--json", "--param", f"output={folder / name}.sqlite",
         *extra],
        url=url, cwd=folder,
    )  # fmt: skip
    shown = ledger_command(["status", "numbers", "--json"], url=url, cwd=folder)
    return done.returncode, orjson.loads(shown.stdout)[0]["run_id"]


def _as_of(url: str, folder: Path, moment: datetime) -> list[dict[str, Any]]:
    shown = ledger_command(
        ["status", "numbers", "--as-of", moment.isoformat(), "--json"],
        url=url, cwd=folder,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    found: list[dict[str, Any]] = orjson.loads(shown.stdout)
    return found


def _held_in_store(url: str, folder: Path) -> dict[str, Any] | None:
    shown = ledger_command(["status", "numbers", "--json"], url=url, cwd=folder)
    runs = orjson.loads(shown.stdout) if shown.returncode == 0 else []
    live = [r for r in runs if r["state"] == "running" and r["current_step"] == "store"]
    return live[0] if live else None


def test_several_runs_at_one_moment(ledger_url: str, tmp_path: Path) -> None:
    # Completed, then failed, before the moment.
    code, completed = _run(ledger_url, tmp_path, "a")
    assert code == 0
    (tmp_path / "fail").touch()
    code, failed = _run(
        ledger_url, tmp_path, "b",
        "--param", f"fail_marker={tmp_path / 'fail'}", "--param", "fail_batch=2",
    )  # fmt: skip
    assert code == 1

    # Live at the moment: held inside its first batch of `store`.
    hold = tmp_path / "hold"
    hold.touch()
    worker = subprocess.Popen(
        [*LEDGER, "run", str(NUMBERS_JOB), "--input",
         str(write_numbers(tmp_path / "c.txt", 40)), "--batch-size", "10",
         "--no-progress", "--param", f"hold_marker={hold}",
         "--param", f"output={tmp_path / 'c.sqlite'}"],
        cwd=tmp_path, env={**os.environ, "LEDGER_URL": ledger_url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        live = wait_until(
            lambda: _held_in_store(ledger_url, tmp_path), "a worker held in store"
        )
        moment = datetime.now(UTC)

        # After the moment, an operator asks it to pause, and its worker
        # dies before the next batch boundary: the pause stays asked.
        paused = ledger_command(
            ["pause", live["run_id"][:8], "--reason", "inspect the input"],
            url=ledger_url, cwd=tmp_path,
        )  # fmt: skip
        assert paused.returncode == 0, paused.stderr
    finally:
        worker.kill()
        worker.communicate(timeout=60)
        hold.unlink()

    # After the moment: a decision on the completed run, and a new run.
    listed = ledger_command(
        ["quarantine", "list", "--run", completed[:8], "--json"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    record = orjson.loads(listed.stdout)["records"][0]["quarantine_id"]
    discarded = ledger_command(
        ["quarantine", "discard", record[:8], "--reason", "a test line"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert discarded.returncode == 0, discarded.stderr
    code, later = _run(ledger_url, tmp_path, "d")
    assert code == 0

    # Then: the three started runs, newest first, each as it stood.
    then = _as_of(ledger_url, tmp_path, moment)
    assert [run["run_id"] for run in then] == [live["run_id"], failed, completed]
    by_id = {run["run_id"]: run for run in then}
    held = by_id[live["run_id"]]
    assert held["state"] == "running"
    assert held["resume_point"]["step"] == "store"
    assert held["resume_point"]["batch"] == 0
    assert held["last_checkpoint"]["step"] == "double"
    assert by_id[failed]["state"] == "failed"
    assert by_id[failed]["resume_point"]["batch"] == 2
    assert by_id[completed]["state"] == "completed"
    assert by_id[completed]["quarantined"] == 1
    now_moment = datetime.now(UTC)
    now = {r["run_id"]: r for r in _as_of(ledger_url, tmp_path, now_moment)}
    assert now[completed]["quarantined"] == 0
    assert now[live["run_id"]]["state"] == "paused"
    assert later in now

    # Only the runs with events after the moment were folded.
    location = parse_ledger_url(ledger_url)
    plan = read(location, lambda db: plan_status_as_of(db, "numbers", moment))
    assert set(plan.settled) == {failed}
    assert plan.to_fold == [live["run_id"], completed]
    latest = read(location, lambda db: plan_status_as_of(db, "numbers", now_moment))
    assert set(latest.settled) == {later, live["run_id"], failed, completed}

    # At moments all through the job's history, the same answer as
    # folding every run from its events.
    stamps = sorted(
        event.timestamp
        for run_id in (completed, failed, live["run_id"], later)
        for event in run_events(ledger_url, run_id)
    )
    moments = [*stamps[:: max(1, len(stamps) // 40)], stamps[-1], moment]
    for at in moments:
        fast = status_as_of(location, "numbers", at)
        folded = status_as_of(location, "numbers", at, fold_all=True)
        assert fast == folded, at
