"""Adversarial: passwords that leak, and recoveries whose one command does not work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest
from conftest import NUMBERS_JOB, wait_until, write_numbers
from helpers import run_cli, status_json

SECRET = "S3cretPW"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://ledger:{SECRET}@127.0.0.1:54329/ledger_test",
        f"postgresql://ledger@127.0.0.1:54329/?password={SECRET}",
        f"postgresql:/ledger:{SECRET}@127.0.0.1:54329/ledger_test",
    ],
)
def test_password_in_ledger_url_is_printed(tmp_path: Path, url: str) -> None:
    """Guards against: a password in a mistyped LEDGER_URL is echoed verbatim in the
    error.
    """
    result = run_cli(["status"], url, tmp_path)
    assert SECRET not in result.stdout + result.stderr, result.stderr


def test_typo_postgres_url_silently_becomes_sqlite_named_after_password(
    tmp_path: Path,
) -> None:
    """Guards against: LEDGER_URL=postgresql:/u:pw@host/db (one slash) runs on an SQLite
    file under ./postgresql:/u:pw@host/.
    """
    numbers = write_numbers(tmp_path / "n.txt", 30)
    url = f"postgresql:/ledger:{SECRET}@127.0.0.1:54329/ledger_test"
    result = run_cli(
        [
            "run",
            str(NUMBERS_JOB),
            "--input",
            str(numbers),
            "--no-progress",
            "--param",
            f"output={tmp_path / 'o.sqlite'}",
        ],
        url,
        tmp_path,
    )
    assert result.returncode == 2
    typo_dir = tmp_path / "postgresql:"
    assert not typo_dir.exists() or not any(SECRET in p for p in os.listdir(typo_dir))


def _failed_numbers_run(tmp_path: Path, url: str, job: str) -> str:
    marker = tmp_path / "fail"
    marker.touch()
    numbers = write_numbers(tmp_path / "n.txt", 100)
    failed = run_cli(
        [
            "run",
            job,
            "--input",
            str(numbers),
            "--batch-size",
            "10",
            "--param",
            f"output={tmp_path / 'o.sqlite'}",
            "--param",
            f"fail_marker={marker}",
            "--no-progress",
        ],
        url,
        tmp_path,
    )
    assert failed.returncode == 1, failed.stderr
    marker.unlink()
    return str(status_json(url, tmp_path)[0]["run_id"])


def test_resume_from_another_directory_cannot_find_relative_job(tmp_path: Path) -> None:
    """Guards against: `ledger resume RUN` (the command explain names) fails from
    another cwd: job_ref is stored relative.
    """
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    (tmp_path / "jobs").mkdir()
    shutil.copy(NUMBERS_JOB, tmp_path / "jobs" / "numbers.py")
    run_id = _failed_numbers_run(tmp_path, url, "jobs/numbers.py")
    other = tmp_path / "other"
    other.mkdir()
    result = run_cli(["resume", run_id[:8], "--no-progress"], url, other)
    assert result.returncode == 0, result.stderr


def test_resume_with_moved_input_names_an_option_resume_lacks(tmp_path: Path) -> None:
    """Guards against: `ledger resume` on a moved input says 'check the --input path',
    an option resume does not have.
    """
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    run_id = _failed_numbers_run(tmp_path, url, str(NUMBERS_JOB))
    (tmp_path / "n.txt").rename(tmp_path / "moved.txt")
    result = run_cli(["resume", run_id[:8], "--no-progress"], url, tmp_path)
    assert result.returncode == 2
    assert "--input" not in result.stderr, result.stderr


def test_history_shows_a_killed_attempt_as_running(tmp_path: Path) -> None:
    """Guards against: after kill -9, `ledger history` reports the dead attempt's
    outcome as 'running' (status says interrupted).
    """
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    numbers = write_numbers(tmp_path / "n.txt", 100)
    killed = run_cli(
        [
            "run",
            str(NUMBERS_JOB),
            "--input",
            str(numbers),
            "--batch-size",
            "10",
            "--param",
            f"output={tmp_path / 'o.sqlite'}",
            "--no-progress",
        ],
        url,
        tmp_path,
        env={"LEDGER_FAULT": "after_checkpoint:store:2"},
    )
    assert killed.returncode == -9
    run_id = status_json(url, tmp_path)[0]["run_id"]
    history = orjson.loads(run_cli(["history", run_id, "--json"], url, tmp_path).stdout)
    assert history["attempts"][0]["outcome"] != "running", history["attempts"][0]


def test_explain_after_too_many_rejected_names_a_command_that_fails_again(
    tmp_path: Path,
) -> None:
    """Guards against: after TooManyRejected, explain's `ledger resume RUN` just fails
    again; the fix needs a new run.
    """
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(
        "".join(f"{n}\n" for n in range(1, 21))
        + "".join(f"w{n}\n" for n in range(10))
        + "".join(f"{n}\n" for n in range(31, 61))
    )
    first = run_cli(
        [
            "run",
            str(NUMBERS_JOB),
            "--input",
            str(mixed),
            "--batch-size",
            "20",
            "--param",
            f"output={tmp_path / 'o.sqlite'}",
            "--no-progress",
        ],
        url,
        tmp_path,
    )
    assert first.returncode == 1
    run_id = status_json(url, tmp_path)[0]["run_id"]
    sentence = run_cli(["explain", run_id], url, tmp_path).stdout
    command = sentence.rsplit("`", 2)[-2].split()
    assert run_cli([*command[1:], "--no-progress"], url, tmp_path).returncode == 0, (
        sentence
    )


def test_interrupt_by_sigint_records_empty_reason(tmp_path: Path) -> None:
    """Guards against: an attempt stopped by Ctrl-C is recorded as 'stopped by ' with
    the signal name missing.
    """
    import signal
    import subprocess

    from conftest import LEDGER

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    numbers = write_numbers(tmp_path / "n.txt", 100)
    hold = tmp_path / "hold"
    hold.touch()
    proc = subprocess.Popen(
        [
            *LEDGER,
            "run",
            str(NUMBERS_JOB),
            "--input",
            str(numbers),
            "--batch-size",
            "10",
            "--param",
            f"output={tmp_path / 'o.sqlite'}",
            "--param",
            f"hold_marker={hold}",
            "--no-progress",
        ],
        cwd=tmp_path,
        env={**os.environ, "LEDGER_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def holding() -> bool:
        probe = run_cli(["status", "--json"], url, tmp_path)
        return probe.returncode == 0 and '"current_step": "store"' in probe.stdout

    wait_until(holding, "the worker to hold the run", 30)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    hold.unlink()
    run_id = status_json(url, tmp_path)[0]["run_id"]
    history = orjson.loads(run_cli(["history", run_id, "--json"], url, tmp_path).stdout)
    assert history["attempts"][0]["error_message"] != "stopped by ", history[
        "attempts"
    ][0]
