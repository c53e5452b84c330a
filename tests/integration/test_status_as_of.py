"""`ledger status JOB --as-of TIME`: a job's runs as they stood then.

The test takes `ledger status --json` while a run is failed, notes the
moment, lets the run recover, and asks for that moment afterwards: the
past, rebuilt from the log, must say what the present said then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from conftest import NUMBERS_JOB, ledger_command, write_numbers

_SHARED = ("step", "batch", "first_record", "last_record", "position")


def _status(url: str, tmp_path: Path, *args: str) -> Any:
    shown = ledger_command(
        ["status", "numbers", *args, "--json"], url=url, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    return orjson.loads(shown.stdout)


def test_the_past_says_what_the_present_said_then(
    ledger_url: str, tmp_path: Path
) -> None:
    source = write_numbers(tmp_path / "n.txt", 100, bad=(7,))
    (tmp_path / "fail").write_text("")
    args = [
        "run", str(NUMBERS_JOB), "--input", str(source), "--batch-size", "10",
        "--param", f"output={tmp_path / 'out.sqlite'}",
        "--param", f"fail_marker={tmp_path / 'fail'}", "--param", "fail_batch=3",
        "--no-progress",
    ]  # fmt: skip
    failed = ledger_command(args, url=ledger_url, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr

    # What status said while the run was failed, and when.
    then = _status(ledger_url, tmp_path)[0]
    moment = datetime.now(UTC)
    assert then["state"] == "failed"

    # The cause is fixed and the run completes.
    (tmp_path / "fail").unlink()
    resumed = ledger_command(
        ["resume", then["run_id"][:8], "--no-progress"], url=ledger_url, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _status(ledger_url, tmp_path)[0]["state"] == "completed"

    # As of that moment: the failed run, its checkpoint and resume point.
    past = _status(ledger_url, tmp_path, "--as-of", moment.isoformat())
    assert len(past) == 1
    run = past[0]
    assert (run["run_id"], run["state"], run["attempts"]) == (
        then["run_id"], "failed", then["attempts"],
    )  # fmt: skip
    for field in _SHARED:
        assert run["last_checkpoint"][field] == then["last_checkpoint"][field]
    assert run["resume_point"] == then["resume_point"]
    assert run["quarantined"] == then["quarantined"] == 1
    assert run["last_checkpoint"]["step"] == "store"
    assert run["resume_point"]["batch"] == 3

    # As of now: completed; before the run started: nothing.
    now = _status(ledger_url, tmp_path, "--as-of", datetime.now(UTC).isoformat())
    assert now[0]["state"] == "completed"
    assert now[0]["resume_point"] is None
    assert now[0]["last_checkpoint"]["last_record"] == 100
    before = datetime.fromisoformat(then["started_at"]) - timedelta(seconds=1)
    assert _status(ledger_url, tmp_path, "--as-of", before.isoformat()) == []
    shown = ledger_command(
        ["status", "numbers", "--as-of", before.isoformat()],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert "no run of numbers had started by" in shown.stdout


def test_as_of_refuses_what_it_cannot_read(sqlite_url: str, tmp_path: Path) -> None:
    cases = [
        (["status", "--as-of", "1h"], "--as-of needs a JOB"),
        (["status", "numbers", "--as-of", "yesterday"], "is not a time"),
    ]
    for args, expected in cases:
        shown = ledger_command(args, url=sqlite_url, cwd=tmp_path)
        assert shown.returncode == 2, args
        assert expected in shown.stderr
        assert len(shown.stderr.strip().splitlines()) == 1
