"""On PostgreSQL a runner follows the log: `ledger project --follow`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from conftest import LEDGER, NUMBERS_JOB, ledger_command, write_numbers

pytestmark = pytest.mark.postgres


def _projected_state(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('proj_runs')").fetchone()
        if not exists or exists[0] is None:
            return []
        rows = conn.execute("SELECT state, attempts FROM proj_runs").fetchall()
        return [(str(state), int(attempts)) for state, attempts in rows]


def test_follow_keeps_read_tables_current(postgres_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "LEDGER_URL": postgres_url}
    follower = subprocess.Popen(
        [*LEDGER, "project", "--follow"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        numbers = write_numbers(tmp_path / "n.txt", 40)
        done = ledger_command(
            ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
             "--param", f"output={tmp_path / 'o.sqlite'}"],
            url=postgres_url, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

        # Nothing but the follower reads the log here, so only it can bring
        # the read tables to the completed run.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _projected_state(postgres_url) == [("completed", 1)]:
                break
            time.sleep(0.05)
        assert _projected_state(postgres_url) == [("completed", 1)]
        assert follower.poll() is None
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    assert "following the log" in out, err
