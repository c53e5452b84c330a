"""Adversarial: bad input that escapes as a traceback, or a bad record that fails a
run.

Each test is named after the defect it guards against; all pass once
the defect is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FLIGHTS_JOB, NUMBERS_JOB, _real_lines, make_flights_zip
from helpers import flights_args, one_clear_line, run_cli, status_json


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


def _csv_with_row_50(tmp_path: Path, column: int, value: str) -> Path:
    header, lines = _real_lines(1000)
    fields = lines[49].decode().split(",")
    fields[column] = value
    lines[49] = ",".join(fields).encode()
    path = tmp_path / "flights.csv"
    path.write_bytes(header + b"".join(lines))
    return path


def _run(ledger: str, tmp_path: Path, source: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli(
        [
            "run",
            str(FLIGHTS_JOB),
            "--input",
            str(source),
            "--batch-size",
            "200",
            "--param",
            f"output={tmp_path / 'out.sqlite'}",
            "--no-progress",
            *extra,
        ],
        ledger,
        tmp_path,
    )


def test_huge_integer_fails_the_run_instead_of_quarantining(
    ledger: str, tmp_path: Path
) -> None:
    """Guards against: one row with a 25-digit dep_delay fails every attempt (orjson
    TypeError) instead of being quarantined.
    """
    result = _run(ledger, tmp_path, _csv_with_row_50(tmp_path, 5, "9" * 25))
    assert result.returncode == 0, result.stderr[-300:]


def test_oversized_quoted_field_fails_the_run(ledger: str, tmp_path: Path) -> None:
    """Guards against: one quoted field over 128 KiB raises csv.Error and fails the run
    instead of being quarantined.
    """
    result = _run(
        ledger, tmp_path, _csv_with_row_50(tmp_path, 11, '"' + "N" * 200_000 + '"')
    )
    assert result.returncode == 0, result.stderr[-300:]


def test_encrypted_zip_is_a_traceback(ledger: str, tmp_path: Path) -> None:
    """Guards against: a password-protected zip escapes as a RuntimeError traceback, not
    one line.
    """
    data = bytearray(make_flights_zip(tmp_path / "f.zip", 300).read_bytes())
    data[data.find(b"PK\x03\x04") + 6] |= 1
    data[data.find(b"PK\x01\x02") + 8] |= 1
    encrypted = tmp_path / "enc.zip"
    encrypted.write_bytes(bytes(data))
    assert one_clear_line(_run(ledger, tmp_path, encrypted))


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x80", b"a,b,c\n1,2,3\n"])
def test_bad_planes_param_is_a_traceback(
    ledger: str, tmp_path: Path, content: bytes
) -> None:
    """Guards against: --param planes=FILE that is binary or lacks a tailnum column
    escapes as a traceback.
    """
    planes = tmp_path / "planes.csv"
    planes.write_bytes(content)
    source = make_flights_zip(tmp_path / "f.zip", 300)
    assert one_clear_line(_run(ledger, tmp_path, source, "--param", f"planes={planes}"))


@pytest.mark.parametrize("where", ["dir", "input"])
def test_unusable_output_path_is_a_traceback(
    ledger: str, tmp_path: Path, where: str
) -> None:
    """Guards against: --param output=<a folder> or =<a non-SQLite file> escapes as an
    sqlite3 traceback.
    """
    source = make_flights_zip(tmp_path / "f.zip", 300)
    output = tmp_path if where == "dir" else source
    result = run_cli(
        flights_args(source, output),
        ledger,
        tmp_path,
    )
    assert one_clear_line(result)


def test_numbers_job_non_utf8_input_is_a_traceback(ledger: str, tmp_path: Path) -> None:
    """Guards against: a non-UTF-8 input to the numbers job escapes check_input as a
    UnicodeDecodeError traceback.
    """
    source = tmp_path / "n.txt"
    source.write_bytes(b"1\n\xff\n")
    result = run_cli(
        [
            "run",
            str(NUMBERS_JOB),
            "--input",
            str(source),
            "--no-progress",
            "--param",
            f"output={tmp_path / 'o.sqlite'}",
        ],
        ledger,
        tmp_path,
    )
    assert one_clear_line(result)


def test_ledger_url_in_memory_is_accepted(tmp_path: Path) -> None:
    """Guards against: LEDGER_URL=:memory: runs a job with no durable ledger at all
    instead of refusing.
    """
    source = make_flights_zip(tmp_path / "f.zip", 300)
    result = _run(":memory:", tmp_path, source)
    assert result.returncode == 2, result.stdout[-200:]


def test_read_command_on_non_database_ledger_is_a_traceback(tmp_path: Path) -> None:
    """Guards against: `ledger status` with LEDGER_URL at a non-database file escapes as
    sqlite3.DatabaseError traceback.
    """
    bogus = tmp_path / "notdb.sqlite"
    bogus.write_text("not a database\n" * 20)
    assert one_clear_line(run_cli(["status"], str(bogus), tmp_path))


def test_invalid_ipv6_url_is_a_traceback(tmp_path: Path) -> None:
    """Guards against: a LEDGER_URL with a broken IPv6 host escapes as a ValueError
    traceback.
    """
    url = "postgresql://ledger:pw@[::1:54329/x"
    assert one_clear_line(run_cli(["status"], url, tmp_path))


def test_quarantine_limit_overflow_is_a_traceback(ledger: str, tmp_path: Path) -> None:
    """Guards against: `ledger quarantine list --limit 10**23` escapes as
    sqlite3.IntegrityError traceback.
    """
    source = make_flights_zip(tmp_path / "f.zip", 300)
    assert _run(ledger, tmp_path, source).returncode == 0
    result = run_cli(["quarantine", "list", "--limit", "9" * 23], ledger, tmp_path)
    assert result.returncode in (0, 2), result.stderr[-200:]
    assert "Traceback" not in result.stderr, result.stderr[-200:]


def test_small_batches_never_trip_the_reject_ratio(ledger: str, tmp_path: Path) -> None:
    """Guards against: with --batch-size under 20 a file of pure garbage is quarantined
    whole and the run 'completes'.
    """
    words = tmp_path / "words.txt"
    words.write_text("".join(f"word{i}\n" for i in range(60)))
    result = run_cli(
        [
            "run",
            str(NUMBERS_JOB),
            "--input",
            str(words),
            "--batch-size",
            "10",
            "--param",
            f"output={tmp_path / 'o.sqlite'}",
            "--no-progress",
        ],
        ledger,
        tmp_path,
    )
    assert result.returncode == 1, result.stdout[-200:]


def test_undashed_uuid_is_not_found(ledger: str, tmp_path: Path) -> None:
    """Guards against: a full run id written without dashes (a valid UUID form) is 'no
    run matches'.
    """
    source = make_flights_zip(tmp_path / "f.zip", 300)
    assert _run(ledger, tmp_path, source).returncode == 0
    run_id = status_json(ledger, tmp_path)[0]["run_id"]
    result = run_cli(["explain", run_id.replace("-", "")], ledger, tmp_path)
    assert result.returncode == 0, result.stderr
