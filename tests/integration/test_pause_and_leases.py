"""Pause and resume, and leases that survive node loss, end to end.

Real `ledger` processes on the test job `tests/jobs/numbers.py`, against
SQLite and PostgreSQL. A frozen worker (SIGSTOP) stands for a lost node:
it is alive, but renews nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import orjson
from conftest import LEDGER, ledger_command, wait_until, write_numbers
from ledger_support import event_names, run_statuses

NUMBERS_JOB = Path(__file__).parents[1] / "jobs" / "numbers.py"

# Short leases, so that a lost worker is found within the test.
LEASE = {"LEDGER_LEASE_SECONDS": "2", "LEDGER_PAUSE_POLL_SECONDS": "0.1"}


def _start_worker(
    tmp_path: Path, url: str, numbers: Path, *params: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LEDGER, "run", str(NUMBERS_JOB), "--input", str(numbers),
         "--batch-size", "10", "--no-progress",
         "--param", f"output={tmp_path / 'out.sqlite'}", *params],
        cwd=tmp_path, env={**os.environ, "LEDGER_URL": url, **LEASE},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _state(url: str, cwd: Path) -> str:
    runs = run_statuses(url, cwd)
    return str(runs[0]["state"]) if runs else ""


def _stored_rows(tmp_path: Path) -> list[int]:
    with sqlite3.connect(tmp_path / "out.sqlite") as db:
        return [row[0] for row in db.execute("SELECT line FROM result ORDER BY line")]


def _explain(url: str, cwd: Path, run_id: str) -> str:
    story = ledger_command(["explain", run_id], url=url, cwd=cwd)
    assert story.returncode == 0, story.stderr
    return story.stdout.strip()


def test_pause_stops_a_live_worker_at_a_batch_boundary_and_resume_lets_it_go_on(
    tmp_path: Path, ledger_url: str
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 200)
    worker = _start_worker(tmp_path, ledger_url, numbers, "--param", "record_ms=10")
    try:
        wait_until(lambda: _state(ledger_url, tmp_path) == "running", "a running run")
        run_id = str(run_statuses(ledger_url, tmp_path)[0]["run_id"])

        # The operator pauses it; the worker stops at its next boundary.
        paused = ledger_command(
            ["pause", run_id[:8], "--reason", "downstream maintenance",
             "--as", "alice"],
            url=ledger_url, cwd=tmp_path,
        )  # fmt: skip
        assert paused.returncode == 0, paused.stderr
        assert "stops at its next batch boundary" in paused.stdout
        wait_until(lambda: _state(ledger_url, tmp_path) == "paused", "the pause")
        story = _explain(ledger_url, tmp_path, run_id)
        assert story.startswith(
            f"Run {run_id[:8]} of numbers is paused by alice (downstream "
            "maintenance) on attempt 1: its worker ("
        )
        assert f"`ledger resume {run_id[:8]}` lets it go on." in story

        # While paused, no other worker may start it, and it cannot be
        # paused twice; neither appends anything.
        before = event_names(ledger_url, run_id, heartbeats=False)
        other = ledger_command(
            ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
             "--param", f"output={tmp_path / 'out.sqlite'}",
             "--param", "record_ms=10"],
            url=ledger_url, cwd=tmp_path,
        )  # fmt: skip
        assert other.returncode == 2
        assert "is paused by alice (downstream maintenance)" in other.stderr
        assert f"`ledger resume {run_id[:8]}`" in other.stderr
        twice = ledger_command(
            ["pause", run_id, "--reason", "again"], url=ledger_url, cwd=tmp_path
        )
        assert twice.returncode == 2
        assert "already paused by alice" in twice.stderr
        assert event_names(ledger_url, run_id, heartbeats=False) == before

        # Resume: the same worker goes on from where it stopped.
        resumed = ledger_command(
            ["resume", run_id, "--reason", "maintenance over", "--as", "bob"],
            url=ledger_url, cwd=tmp_path,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert "its worker" in resumed.stdout
        assert "goes on" in resumed.stdout
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()

    # One attempt did all the work; nothing was begun while paused.
    names = event_names(ledger_url, run_id)
    paused_at = names.index("WorkerPaused")
    lifted_at = names.index("PauseLifted")
    assert names.index("PauseRequested") < paused_at < lifted_at
    assert "BatchStarted" not in names[paused_at:lifted_at]
    assert names.count("AttemptStarted") == 1
    assert names[-1] == "RunCompleted"
    assert _stored_rows(tmp_path) == list(range(1, 201))

    shown = ledger_command(["history", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    actions = orjson.loads(shown.stdout)["run"]["actions"]
    assert [(a["action"], a["by"], a["reason"]) for a in actions] == [
        ("pause", "alice", "downstream maintenance"),
        ("resume", "bob", "maintenance over"),
    ]


def test_a_run_without_a_worker_is_paused_at_once_and_resume_starts_it(
    tmp_path: Path, ledger_url: str
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 50)
    marker = tmp_path / "fail"
    marker.touch()
    failed = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--param", f"output={tmp_path / 'out.sqlite'}",
         "--param", f"fail_marker={marker}", "--param", "fail_batch=2"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1
    run_id = str(run_statuses(ledger_url, tmp_path)[0]["run_id"])
    marker.unlink()

    paused = ledger_command(
        ["pause", run_id, "--reason", "vendor fix pending", "--as", "carol"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert paused.returncode == 0, paused.stderr
    assert _state(ledger_url, tmp_path) == "paused"
    story = _explain(ledger_url, tmp_path, run_id)
    assert story == (
        f"Run {run_id[:8]} of numbers is paused by carol (vendor fix pending); no "
        "worker is waiting; last good checkpoint: step store, batch 1, rows "
        "11\u201320, line 20; 1 of 2 steps done (double) and 2 batches of store "
        f"checkpointed, nothing quarantined; `ledger resume {run_id[:8]}` lifts "
        "the pause and goes on from step store, batch 2, from row 21 (source "
        "position: line 20)."
    )

    # Resume lifts the pause and runs the next attempt to the end.
    resumed = ledger_command(["resume", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = orjson.loads(resumed.stdout)
    assert (summary["status"], summary["attempt"]) == ("completed", 2)
    assert _stored_rows(tmp_path) == list(range(1, 51))

    # Controls that make no sense now are refused, and append nothing.
    before = event_names(ledger_url, run_id)
    for args, expected in (
        (["pause", run_id, "--reason", "late"], "is completed"),
        (["resume", run_id], "already completed"),
        (["pause", run_id, "--reason", "  "], "needs a reason"),
    ):
        refused = ledger_command(args, url=ledger_url, cwd=tmp_path)
        assert refused.returncode == 2, args
        assert expected in refused.stderr, refused.stderr
    assert event_names(ledger_url, run_id) == before


def test_a_heartbeat_keeps_a_slow_worker_its_run(
    tmp_path: Path, ledger_url: str
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 30)
    hold = tmp_path / "hold"
    hold.touch()
    worker = _start_worker(
        tmp_path, ledger_url, numbers, "--param", f"hold_marker={hold}"
    )
    try:
        # Its first batch of `store` holds far longer than the 2 s lease.
        wait_until(
            lambda: (
                run_statuses(ledger_url, tmp_path)
                and run_statuses(ledger_url, tmp_path)[0]["current_step"] == "store"
            ),
            "the worker to hold a batch of store",
        )
        run_id = str(run_statuses(ledger_url, tmp_path)[0]["run_id"])
        held_since = datetime.now(UTC).timestamp()

        # Three leases later it still holds the run, thanks to heartbeats.
        def still_held_after_three_leases() -> bool:
            state = _state(ledger_url, tmp_path)
            assert state == "running", state
            return datetime.now(UTC).timestamp() > held_since + 6

        wait_until(still_held_after_three_leases, "three leases to pass", 30)
        assert "LeaseRenewed" in event_names(ledger_url, run_id)
        taken = ledger_command(
            ["resume", run_id], url=ledger_url, cwd=tmp_path, env=LEASE
        )
        assert taken.returncode == 2
        assert "held by a live worker" in taken.stderr
    finally:
        hold.unlink()
        _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err


def test_a_frozen_worker_loses_its_lease_and_its_late_appends_are_refused(
    tmp_path: Path, ledger_url: str
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 100)
    hold = tmp_path / "hold"
    hold.touch()
    worker = _start_worker(
        tmp_path, ledger_url, numbers, "--param", f"hold_marker={hold}"
    )
    try:
        wait_until(
            lambda: (
                run_statuses(ledger_url, tmp_path)
                and run_statuses(ledger_url, tmp_path)[0]["current_step"] == "store"
            ),
            "the worker to hold a batch of store",
        )
        run_id = str(run_statuses(ledger_url, tmp_path)[0]["run_id"])

        # The node is lost: the worker lives, but renews nothing.
        worker.send_signal(signal.SIGSTOP)
        wait_until(
            lambda: _state(ledger_url, tmp_path) == "abandoned-by-worker",
            "the lease to run out",
        )
        story = _explain(ledger_url, tmp_path, run_id)
        assert story.startswith(
            f"Run {run_id[:8]} of numbers was abandoned by its worker on attempt 1 "
            f"(lease of pid {worker.pid} on host "
        )
        assert "it stopped renewing its lease, a lost node or a frozen process" in (
            story
        )
        assert story.endswith(
            "another worker may take it over and resume at step store, batch 0, "
            f"from the start: recover with `ledger resume {run_id[:8]}`."
        )

        # Another worker takes it over, with no manual step, and finishes.
        hold.unlink()
        taken = ledger_command(
            ["resume", run_id, "--json"], url=ledger_url, cwd=tmp_path, env=LEASE
        )
        assert taken.returncode == 0, taken.stderr
        assert orjson.loads(taken.stdout)["status"] == "completed"
    finally:
        hold.unlink(missing_ok=True)
        worker.send_signal(signal.SIGCONT)
        _, err = worker.communicate(timeout=120)

    # The old worker woke up: its late appends were refused and recorded.
    assert worker.returncode == 2, err
    assert "was taken over by attempt 2" in err or "superseded" in err, err
    names = event_names(ledger_url, run_id)
    assert names.count("AppendsRefused") == 1
    assert names.index("AppendsRefused") > names.index("RunCompleted")
    assert names.count("RunCompleted") == 1
    assert _stored_rows(tmp_path) == list(range(1, 101))
    shown = ledger_command(["history", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    view = orjson.loads(shown.stdout)
    assert view["run"]["state"] == "completed"
    refused = [a for a in view["run"]["actions"] if a["action"] == "refused"]
    assert refused[0]["by"] == "the late worker of attempt 1"
    assert "never applied" in refused[0]["reason"]
