"""Bad input to `ledger consume`: one line naming the fix, exit code 2,
and nothing recorded in the ledger."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest
from conftest import FLIGHTS_JOB, REPO, ledger_command

STREAM_JOB = REPO / "tests" / "jobs" / "stream.py"


def _closed_port() -> int:
    # A port nothing listens on: bound, then released.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            [str(STREAM_JOB), "--bootstrap-servers", f"127.0.0.1:{_closed_port()}"],
            "did not answer",
        ),
        ([str(FLIGHTS_JOB)], "subclasses consumers.ConsumerJob"),
        ([str(STREAM_JOB), "--param", "nope=1"], "use one of: sink"),
        ([str(STREAM_JOB), "--param", "sink"], "not NAME=VALUE"),
        ([str(STREAM_JOB), "--until-idle", "0"], "--until-idle"),
    ],
)
def test_bad_consume_input_is_refused_before_anything_is_recorded(
    tmp_path: Path, sqlite_url: str, args: list[str], says: str
) -> None:
    result = ledger_command(["consume", *args], url=sqlite_url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr

    status = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    if status.returncode == 0:
        assert orjson.loads(status.stdout) == []


def test_a_consumer_job_with_a_bad_group_is_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    job = tmp_path / "bad_group.py"
    job.write_text(
        "import runpy\n"
        f"base = runpy.run_path({str(STREAM_JOB)!r})['StreamNumbers']\n"
        "class Bad(base):\n"
        "    group_id = 'has:colon'\n"
        "job = Bad()\n"
    )
    result = ledger_command(["consume", str(job)], url=sqlite_url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "group_id must be set and hold no ':'" in result.stderr
