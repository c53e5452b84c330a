"""Attacks on effects made while another party acts on the same run.

A worker frozen past its lease must make no effect call once another
attempt took its run over; an operator's decision on an uncertain effect
must not be lost to the worker that is still handling its batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import LEDGER, REPO, ledger_command, wait_until

ATTACK_JOB = REPO / "tests" / "jobs" / "effects_attack_job.py"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {n}\n" for n in range(1, 26)))
    return path


def run_args(tmp_path: Path, source: Path, mode: str, target: int) -> list[str]:
    return [
        "run", str(ATTACK_JOB), "--input", str(source), "--batch-size", "10",
        "--param", f"calls={tmp_path / 'calls.log'}", "--param", f"mode={mode}",
        "--param", f"target={target}", "--no-progress",
    ]  # fmt: skip


def start_worker(url: str, tmp_path: Path, args: list[str], **env: str) -> Any:
    return subprocess.Popen(
        [*LEDGER, *args],
        cwd=tmp_path,
        env={**os.environ, "LEDGER_URL": url, "ATTACK_HONOURS": "0", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(args: list[str], url: str, tmp_path: Path) -> Any:
    return ledger_command(args, url=url, cwd=tmp_path, env={"ATTACK_HONOURS": "0"})


def calls(tmp_path: Path) -> list[tuple[str, int]]:
    """Each call that reached the downstream: its line and the caller's pid."""
    path = tmp_path / "calls.log"
    if not path.exists():
        return []
    rows = [row.split(" ", 1)[1] for row in path.read_text().splitlines()]
    return [(line, int(pid)) for line, pid in (r.rsplit(" pid=", 1) for r in rows)]


def the_run(url: str, tmp_path: Path) -> dict[str, Any]:
    shown = cli(["status", "effects-attack", "--json"], url, tmp_path)
    assert shown.returncode == 0, shown.stderr
    runs = orjson.loads(shown.stdout)
    assert len(runs) == 1
    run: dict[str, Any] = runs[0]
    return run


def stopped(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tT" in status


def test_a_worker_frozen_early_in_its_attempt_makes_no_call_after_a_takeover(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    args = run_args(tmp_path, source, "stop", 3)
    lease = {"LEDGER_LEASE_SECONDS": "3"}

    # Worker A sends records 1 and 2, then freezes (SIGSTOP) at record 3,
    # well inside the first third of its lease.
    first = start_worker(sqlite_url, tmp_path, args, **lease)
    marker = tmp_path / "stopped.once"
    wait_until(marker.exists, "worker A to freeze")
    assert int(marker.read_text()) == first.pid
    wait_until(lambda: stopped(first.pid), "worker A to be stopped")

    # Its lease runs out; worker B takes the run over and waits at record 3.
    until = datetime.fromisoformat(the_run(sqlite_url, tmp_path)["lease_until"])
    wait_until(lambda: datetime.now(UTC) > until, "worker A's lease to run out")
    second = start_worker(sqlite_url, tmp_path, args, **lease)
    wait_until(
        lambda: the_run(sqlite_url, tmp_path)["attempts"] == 2,
        "worker B to take the run over",
    )

    # A wakes: it was superseded, so it must stop without calling anyone.
    os.kill(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=60)
    assert first.returncode != 0
    assert "superseded" in first_err or "without a lease" in first_err
    (tmp_path / "go").write_text("")
    _, second_err = second.communicate(timeout=120)
    assert second.returncode == 0, second_err

    by_a = sorted(line for line, pid in calls(tmp_path) if pid == first.pid)
    assert by_a == ["line 1", "line 2"], (
        f"worker A called {by_a} after attempt 2 took its run over"
    )


def test_a_decision_while_the_worker_holds_the_record_is_not_lost(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    args = run_args(tmp_path, source, "block", 15)

    # Record 13's worker dies between its intent and its call.
    killed = ledger_command(
        args, url=sqlite_url, cwd=tmp_path,
        env={"ATTACK_HONOURS": "0", "LEDGER_FAULT": "after_intent:send:1:3"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr

    # The next worker holds record 13's effect as uncertain, and is still in
    # the same batch (waiting after record 15) when the operator decides.
    worker = start_worker(sqlite_url, tmp_path, args)
    wait_until((tmp_path / "blocked").exists, "the worker to reach record 15")
    run_id = str(the_run(sqlite_url, tmp_path)["run_id"])

    def uncertain() -> list[dict[str, Any]]:
        shown = cli(
            ["effects", run_id, "--state", "uncertain", "--json"], sqlite_url, tmp_path
        )
        assert shown.returncode == 0, shown.stderr
        effects: list[dict[str, Any]] = orjson.loads(shown.stdout)["effects"]
        return effects

    key = wait_until(uncertain, "record 13's effect to be held")[0]["key"]
    decided = cli(
        ["effects", "retry", key, "--reason", "not in the vendor log"],
        sqlite_url, tmp_path,
    )  # fmt: skip
    (tmp_path / "go").write_text("")
    _, worker_err = worker.communicate(timeout=120)
    assert worker.returncode == 0, worker_err

    # Either the decision was refused while the worker held the record (and
    # it still waits), or it took effect: record 13 sent, nothing waiting.
    if decided.returncode != 0:
        assert [e["key"] for e in uncertain()] == [key]
        return
    pending = cli(
        ["quarantine", "list", "--run", run_id, "--json"], sqlite_url, tmp_path
    )
    assert pending.returncode == 0, pending.stderr
    sent = [line for line, _ in calls(tmp_path)]
    waiting = orjson.loads(pending.stdout)["total"]
    said = f"decision answered {decided.stdout.strip()!r}"
    assert sent.count("line 13") == 1, f"{said}; record 13 was never sent"
    assert waiting == 0, f"{said}; {waiting} record(s) left in quarantine"
