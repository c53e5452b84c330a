"""On PostgreSQL a runner follows the log: `ledger project --follow`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from conftest import LEDGER, NUMBERS_JOB, wait_until, write_numbers

from ledger.config import parse_ledger_url
from ledger.loader import load_job
from ledger.runtime import describe_input, resolve_params, run_job
from ledger.store import opened

pytestmark = pytest.mark.postgres


def _projected_state(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('proj_runs')").fetchone()
        if not exists or exists[0] is None:
            return []
        rows = conn.execute("SELECT state, attempts FROM proj_runs").fetchall()
        return [(str(state), int(attempts)) for state, attempts in rows]


def _wait_for_line(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if text in line:
            return
        if not line and process.poll() is not None:
            break
    pytest.fail(f"the follower never printed {text!r}")


def test_follow_keeps_read_tables_current(postgres_url: str, tmp_path: Path) -> None:
    location = parse_ledger_url(postgres_url)
    with opened(location):
        pass  # creates the ledger's tables, as a first job would

    follower = subprocess.Popen(
        [*LEDGER, "project", "--follow"],
        cwd=tmp_path,
        env={**os.environ, "LEDGER_URL": postgres_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_line(follower, "following the log")

        # The job runs through the library, which never touches the read
        # tables: only the follower can bring them to the completed run.
        job = load_job(str(NUMBERS_JOB))
        numbers = write_numbers(tmp_path / "n.txt", 40)
        params = resolve_params(
            job, {"batch_size": "10", "output": str(tmp_path / "o.sqlite")}
        )
        with opened(location) as ledger:
            run_job(ledger, job, str(NUMBERS_JOB), describe_input(numbers), params)

        wait_until(
            lambda: _projected_state(postgres_url) == [("completed", 1)],
            "the follower to project the run",
            30,
        )
        assert _projected_state(postgres_url) == [("completed", 1)]
        assert follower.poll() is None
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=30)
