"""Bad input of every kind: one clear line naming the fix, a non-zero exit,
and nothing already recorded is lost."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import FLIGHTS_JOB, NUMBERS_JOB, ledger_command, write_numbers

from ledger.config import parse_ledger_url
from ledger.loader import load_job
from ledger.runtime import describe_input, resolve_params, run_job
from ledger.store import opened


def _event_count(url: str) -> int:
    with opened(parse_ledger_url(url)) as ledger:
        return int(ledger.recorder.max_notification_id() or 0)


@pytest.fixture
def recorded(sqlite_url: str, tmp_path: Path) -> str:
    """A ledger that already holds one completed run."""
    numbers = write_numbers(tmp_path / "numbers.txt", 50)
    done = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--param", f"output={tmp_path / 'n.sqlite'}"],
        url=sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _event_count(sqlite_url) > 0
    return sqlite_url


def _assert_refused(result: object, *phrases: str, code: int = 2) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_missing_input_file(recorded: str, tmp_path: Path) -> None:
    before = _event_count(recorded)
    result = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(tmp_path / "nope.zip")],
        url=recorded, cwd=tmp_path,
    )  # fmt: skip
    _assert_refused(result, "no such file", "check the --input path")
    assert _event_count(recorded) == before


def test_malformed_csv_header(recorded: str, tmp_path: Path) -> None:
    bad = tmp_path / "flights.csv"
    bad.write_text("name,age\nada,36\n")
    before = _event_count(recorded)
    result = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(bad)], url=recorded, cwd=tmp_path
    )
    _assert_refused(result, "malformed CSV", "pass the flights table")
    assert _event_count(recorded) == before


def test_corrupt_zip(recorded: str, tmp_path: Path) -> None:
    bad = tmp_path / "flights.csv.zip"
    bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    before = _event_count(recorded)
    result = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(bad)], url=recorded, cwd=tmp_path
    )
    _assert_refused(result, str(bad))
    assert _event_count(recorded) == before


def test_unreachable_postgres(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens there, so the connection is refused.
    url = "postgresql://ledger:secret-pw@127.0.0.1:9/ledger"
    for args in (["status"], ["run", str(FLIGHTS_JOB)]):
        result = ledger_command(args, url=url, cwd=tmp_path)
        _assert_refused(result, "cannot use the ledger", "LEDGER_URL")
        assert "secret-pw" not in result.stderr


def test_wrong_scheme(tmp_path: Path) -> None:
    result = ledger_command(["status"], url="mysql://u:p@127.0.0.1/db", cwd=tmp_path)
    _assert_refused(result, "unsupported scheme 'mysql'", "LEDGER_URL")


def test_postgres_url_without_database(tmp_path: Path) -> None:
    result = ledger_command(["status"], url="postgresql://u@127.0.0.1:5/", cwd=tmp_path)
    _assert_refused(result, "no database name")


@pytest.mark.postgres
def test_wrong_postgres_password(postgres_url: str, tmp_path: Path) -> None:
    url = postgres_url.replace("ledger:ledger@", "ledger:wrong-password@")
    result = ledger_command(["status"], url=url, cwd=tmp_path)
    _assert_refused(result, "cannot use the ledger")
    assert "wrong-password" not in result.stderr


def test_status_on_missing_sqlite_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo' / 'ledger.sqlite'}"
    result = ledger_command(["status"], url=url, cwd=tmp_path)
    _assert_refused(result, "no ledger file", "run a job first")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("command", ["history", "explain", "resume"])
def test_unknown_run_id(recorded: str, tmp_path: Path, command: str) -> None:
    before = _event_count(recorded)
    result = ledger_command([command, "deadbeef"], url=recorded, cwd=tmp_path)
    _assert_refused(result, "no run matches 'deadbeef'", "ledger status")
    result = ledger_command([command, "not-a-run"], url=recorded, cwd=tmp_path)
    _assert_refused(result, "no run matches", "hex")
    assert _event_count(recorded) == before


def test_a_run_prefix_typed_without_its_dashes_is_found(
    recorded: str, tmp_path: Path
) -> None:
    shown = ledger_command(["status", "--json"], url=recorded, cwd=tmp_path)
    run_id = orjson.loads(shown.stdout)[0]["run_id"]
    for ref in (run_id[:9].replace("-", ""), run_id.replace("-", "")[:14].upper()):
        found = ledger_command(["explain", ref], url=recorded, cwd=tmp_path)
        assert found.returncode == 0, (ref, found.stderr)
        assert run_id[:8] in found.stdout


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["pause", "abcd"], "Missing option '--reason'; see `ledger pause --help`"),
        (["quarantine", "list", "--state", "bogus"], "Invalid value for '--state'"),
        (["rerun", "abcd", "--from", "batch:1", "--max-quarantine-ratio", "2"],
         "Invalid value for '--max-quarantine-ratio'"),
    ],
)  # fmt: skip
def test_a_missing_option_or_bad_value_is_one_line(
    recorded: str, tmp_path: Path, args: list[str], phrase: str
) -> None:
    before = _event_count(recorded)
    result = ledger_command(args, url=recorded, cwd=tmp_path)
    _assert_refused(result, phrase)
    assert _event_count(recorded) == before


def test_missing_job_file(recorded: str, tmp_path: Path) -> None:
    result = ledger_command(["run", "jobs/nope.py"], url=recorded, cwd=tmp_path)
    _assert_refused(result, "does not exist", ".py file")


def test_unknown_param(recorded: str, tmp_path: Path) -> None:
    result = ledger_command(
        ["run", str(FLIGHTS_JOB), "--param", "colour=red"], url=recorded, cwd=tmp_path
    )
    _assert_refused(result, "unknown parameter", "batch_size")


def test_param_of_wrong_type(recorded: str, tmp_path: Path) -> None:
    result = ledger_command(
        ["run", str(FLIGHTS_JOB), "--param", "batch_size=lots"],
        url=recorded, cwd=tmp_path,
    )  # fmt: skip
    _assert_refused(result, "not a valid int")


def test_output_on_the_ledger_file(recorded: str, tmp_path: Path) -> None:
    ledger_file = parse_ledger_url(recorded).sqlite_path
    before = _event_count(recorded)
    result = ledger_command(
        ["run", str(FLIGHTS_JOB), "--param", f"output={ledger_file}"],
        url=recorded, cwd=tmp_path,
    )  # fmt: skip
    _assert_refused(result, "is the ledger's own file", "apart")
    assert _event_count(recorded) == before


def test_wrong_file_with_right_header_fails_the_step(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Every row malformed: quarantining them all would hide a wrong file.
    header = (
        "year,month,day,dep_time,sched_dep_time,dep_delay,arr_time,"
        "sched_arr_time,arr_delay,carrier,flight,tailnum,origin,dest,air_time,"
        "distance,hour,minute,time_hour\n"
    )
    bad = tmp_path / "flights.csv"
    bad.write_text(header + "oops,1,2\n" * 100)
    result = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(bad), "--json",
         "--param", f"output={tmp_path / 'o.sqlite'}"],
        url=sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    _assert_refused(result, "max_quarantine_ratio", "--max-quarantine-ratio 1", code=1)

    # The failure is recorded, with nothing quarantined.
    explain = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    runs = orjson.loads(explain.stdout)
    assert runs[0]["state"] == "failed"
    assert runs[0]["failure"]["error_class"] == "TooManyRejected"
    assert runs[0]["quarantined"] == 0


def test_status_answers_while_a_writer_holds_the_ledger(
    recorded: str, tmp_path: Path
) -> None:
    import sqlite3

    # A run the read tables have not seen (the library, unlike `ledger run`,
    # leaves them alone), then a writer that holds the lock: status must
    # answer from the tables as they are, and say so.
    job = load_job(str(NUMBERS_JOB))
    numbers = write_numbers(tmp_path / "more.txt", 5)
    params = resolve_params(job, {"output": str(tmp_path / "m.sqlite")})
    with opened(parse_ledger_url(recorded)) as ledger:
        run_job(ledger, job, str(NUMBERS_JOB), describe_input(numbers), params)
    path = parse_ledger_url(recorded).sqlite_path
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        result = ledger_command(["status", "--json"], url=recorded, cwd=tmp_path)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert result.returncode == 0, result.stderr
    assert "the ledger is busy" in result.stderr
    assert orjson.loads(result.stdout)[0]["job"] == "numbers"
