"""`ledger explain` in one sentence, for every state a run can rest in.

Each test brings a real run (on PostgreSQL) to one state through the
command line, as an operator would, and checks the whole sentence: what
failed (stage, error class), the resume point, how much is done, what is
quarantined, and the single command that recovers it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import orjson
import pytest
from conftest import (
    FLIGHTS_JOB,
    LEDGER,
    ledger_command,
    wait_until,
    write_numbers,
)
from ledger_support import latest_run_id

from ledger.config import parse_ledger_url
from ledger.operations import rerun_run

pytestmark = pytest.mark.postgres

NUMBERS_JOB = Path(__file__).parents[1] / "jobs" / "numbers.py"


def _explain(url: str, cwd: Path, run_id: str) -> str:
    story = ledger_command(["explain", run_id], url=url, cwd=cwd)
    assert story.returncode == 0, story.stderr
    sentence = story.stdout.strip()

    # Shown with `pytest -s`, to quote the sentences as they are.
    print(f"\nexplain: {sentence}")

    # One sentence: no line breaks, one full stop at its end.
    assert "\n" not in sentence
    assert sentence.endswith(".")
    return sentence


def _failed_numbers_run(tmp_path: Path, url: str) -> str:
    numbers = write_numbers(tmp_path / "n.txt", 100, bad=(7,))
    marker = tmp_path / "fail"
    marker.touch()
    failed = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--param", f"output={tmp_path / 'out.sqlite'}",
         "--param", f"fail_marker={marker}", "--param", "fail_batch=3"],
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    marker.unlink()
    return latest_run_id(url, tmp_path)


def test_completed_with_quarantined_records_pending(
    tmp_path: Path, postgres_url: str, small_flights: Path
) -> None:
    done = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(small_flights), "--batch-size",
         "500", "--param", f"output={tmp_path / 'out.sqlite'}"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = latest_run_id(postgres_url, tmp_path)[:8]
    assert _explain(postgres_url, tmp_path, run) == (
        f"Run {run} of flights-import completed on attempt 1: all 3 steps done, "
        "2,980 records written by load, 20 records quarantined (18 incomplete, 2 "
        "malformed); nothing to recover; the 20 quarantined records wait for one "
        "decision: once the cause is fixed, `ledger quarantine promote --all "
        f"--run {run}` puts them back through the job, or `ledger quarantine "
        f"discard --all --run {run} --reason TEXT` sets them aside (`ledger "
        f"quarantine list --run {run}` shows them)."
    )


def test_failed_mid_step(tmp_path: Path, postgres_url: str) -> None:
    run = _failed_numbers_run(tmp_path, postgres_url)[:8]
    assert _explain(postgres_url, tmp_path, run) == (
        f"Run {run} of numbers failed on attempt 1 in step store, batch 3 with "
        "RuntimeError: planted failure in store; 1 of 2 steps done (double) and "
        "3 batches of store checkpointed, 1 record quarantined (1 not_a_number); "
        "it will resume at step store, batch 3, from row 32 (source position: "
        f"line 31); fix the cause, then recover with `ledger resume {run}`."
    )


def test_paused_with_no_worker(tmp_path: Path, postgres_url: str) -> None:
    run = _failed_numbers_run(tmp_path, postgres_url)[:8]
    paused = ledger_command(
        ["pause", run, "--reason", "vendor fix pending", "--as", "carol"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert paused.returncode == 0, paused.stderr
    assert _explain(postgres_url, tmp_path, run) == (
        f"Run {run} of numbers is paused by carol (vendor fix pending); no worker "
        "is waiting; last good checkpoint: step store, batch 2, rows 22\u201331, "
        "line 31; 1 of 2 steps done (double) and 3 batches of store checkpointed, "
        f"1 record quarantined (1 not_a_number); `ledger resume {run}` lifts the "
        "pause and goes on from step store, batch 3, from row 32 (source "
        "position: line 31)."
    )


def test_abandoned_by_an_operator(tmp_path: Path, postgres_url: str) -> None:
    run = _failed_numbers_run(tmp_path, postgres_url)[:8]
    abandoned = ledger_command(
        ["abandon", run, "--reason", "host decommissioned", "--as", "dave"],
        url=postgres_url, cwd=tmp_path,
    )  # fmt: skip
    assert abandoned.returncode == 0, abandoned.stderr
    assert _explain(postgres_url, tmp_path, run) == (
        f"Run {run} of numbers was abandoned on attempt 1 by dave (host "
        "decommissioned); last good checkpoint: step store, batch 2, rows "
        "22\u201331, line 31; 1 of 2 steps done (double) and 3 batches of store "
        "checkpointed, 1 record quarantined (1 not_a_number); a new worker "
        "resumes it at step store, batch 3, from row 32 (source position: line "
        f"31): recover with `ledger resume {run}`."
    )


def test_rewound_before_its_attempt_starts(tmp_path: Path, postgres_url: str) -> None:
    run = _failed_numbers_run(tmp_path, postgres_url)[:8]
    rerun_run(
        parse_ledger_url(postgres_url), run, by="erin", reason="store wrote "
        "bad rows from batch 1", point="step:store/batch:1",
    )  # fmt: skip
    assert _explain(postgres_url, tmp_path, run) == (
        f"Run {run} of numbers was rewound by erin (from step store, batch 1: "
        "store wrote bad rows from batch 1); last good checkpoint: step store, "
        "batch 0, rows 1\u201311, line 11; 1 of 2 steps done (double) and 1 batch "
        "of store checkpointed, 1 record quarantined (1 not_a_number); the next "
        "attempt redoes the work from step store, batch 1, from row 12 (source "
        f"position: line 11): start it with `ledger resume {run}`."
    )


def test_abandoned_by_a_lost_worker(tmp_path: Path, postgres_url: str) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 100)
    hold = tmp_path / "hold"
    hold.touch()
    worker = subprocess.Popen(
        [*LEDGER, "run", str(NUMBERS_JOB), "--input", str(numbers),
         "--batch-size", "10", "--no-progress",
         "--param", f"output={tmp_path / 'out.sqlite'}",
         "--param", f"hold_marker={hold}"],
        cwd=tmp_path, env={**os.environ, "LEDGER_URL": postgres_url,
                           "LEDGER_LEASE_SECONDS": "2"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def holding_store() -> str | None:
            shown = ledger_command(["status", "--json"], url=postgres_url, cwd=tmp_path)
            runs = orjson.loads(shown.stdout) if shown.returncode == 0 else []
            if runs and runs[0]["current_step"] == "store":
                return str(runs[0]["run_id"])
            return None

        run = wait_until(holding_store, "the worker to hold store")[:8]

        # The node is lost: its worker renews nothing any more.
        worker.send_signal(signal.SIGSTOP)
        sentence = wait_until(
            lambda: (
                (s := _explain(postgres_url, tmp_path, run))
                and ("abandoned by its worker" in s)
                and s
            ),
            "the lease to run out",
        )
    finally:
        hold.unlink()
        worker.send_signal(signal.SIGCONT)
        worker.kill()
        worker.wait(timeout=60)
    pattern = (
        rf"Run {run} of numbers was abandoned by its worker on attempt 1 \(lease "
        rf"of pid {worker.pid} on host \S+ expired at \S+Z: it stopped renewing "
        r"its lease, a lost node or a frozen process\); last good checkpoint: "
        r"step double, batch 9, rows 91\u2013100, line 100; 1 of 2 steps done "
        r"\(double\), nothing quarantined; another worker may take it over and "
        r"resume at step store, batch 0, from the start: recover with `ledger "
        rf"resume {run}`\."
    )
    assert re.fullmatch(pattern, str(sentence)), sentence
