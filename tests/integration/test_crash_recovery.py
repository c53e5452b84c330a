"""Kill the main job with SIGKILL at several points, restart it, compare.

Each kill is a real `kill -9` of the `ledger run` process: at a failpoint
(inside a batch, between the output write and the checkpoint, inside the
checkpoint transaction, right after it) or from outside at a moment picked
by a seeded random draw. After the restart the output must equal a clean
run's row for row, no committed batch may be started again, and the
history must show the killed attempt.
"""

from __future__ import annotations

import csv
import io
import random
import signal
import sqlite3
import subprocess
import time
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import FLIGHTS_JOB, LEDGER, ledger_command, make_flights_zip

from ledger.config import parse_ledger_url
from ledger.store import opened

pytestmark = pytest.mark.slow

ROWS = 6000
BATCH = 500


def _stored_events(url: str) -> list[tuple[int, str, dict[str, Any]]]:
    with opened(parse_ledger_url(url)) as ledger:
        return [
            (n.id, n.topic.rsplit(".", 1)[-1], orjson.loads(n.state))
            for n in ledger.recorder.select_notifications(start=1, limit=10**7)
        ]


def _output_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM flights ORDER BY key").fetchall()


def _run_args(source: Path, output: Path) -> list[str]:
    return [
        "run", str(FLIGHTS_JOB), "--input", str(source), "--batch-size",
        str(BATCH), "--param", f"output={output}", "--no-progress", "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def flights_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_flights_zip(tmp_path_factory.mktemp("crash") / "f.zip", ROWS)


@pytest.fixture(scope="module")
def clean_output(
    flights_input: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[Any, ...]]:
    """The output of a run that nothing interrupted."""
    folder = tmp_path_factory.mktemp("clean")
    output = folder / "out.sqlite"
    done = ledger_command(
        _run_args(flights_input, output),
        url=f"sqlite:///{folder / 'ledger.sqlite'}",
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr
    rows = _output_rows(output)
    assert len(rows) == _expected_loaded(flights_input)
    return rows


def _expected_loaded(source: Path) -> int:
    """Rows the job's rules load, counted straight from the input."""
    with zipfile.ZipFile(source) as archive:
        text = archive.read("flights.csv").decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    loaded = 0
    for row in rows:
        if (
            None in row
            or None in row.values()
            or (not row["dep_time"].isdigit() and (row["dep_time"] != "NA"))
        ):
            continue  # malformed
        departed = row["dep_time"] != "NA"
        if departed and "NA" in (row["arr_time"], row["arr_delay"]):
            continue  # incomplete
        loaded += 1
    return loaded


def _assert_recovered(
    url: str, output: Path, clean: list[tuple[Any, ...]], killed_attempts: int
) -> None:
    # The output equals a clean run's, row for row.
    assert _output_rows(output) == clean

    # Every batch of every step is checkpointed exactly once.
    events = _stored_events(url)
    checkpoints: dict[tuple[str, int], int] = {}
    for event_id, kind, state in events:
        if kind == "BatchCheckpointed":
            key = (state["step"], state["batch"])
            assert key not in checkpoints, f"batch {key} checkpointed twice"
            checkpoints[key] = event_id
    assert len(checkpoints) == 3 * (ROWS // BATCH) - 0  # extract/enrich/load

    # No batch is started again once its checkpoint committed.
    for event_id, kind, state in events:
        if kind == "BatchStarted":
            key = (state["step"], state["batch"])
            assert event_id < checkpoints[key], f"committed batch {key} redone"

    # The killed attempts are in the history, then one that completed.
    outcomes = [state for _, kind, state in events if kind == "AttemptCrashed"]
    assert len(outcomes) == killed_attempts
    assert events[-1][1] == "RunCompleted"
    assert events[-1][2]["attempt"] == killed_attempts + 1


FAILPOINTS = [
    "in_batch:extract:3",
    "after_write:enrich:5",
    "in_checkpoint:load:2",
    "after_checkpoint:enrich:11",
    "in_checkpoint:extract:0",
]


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_kill_at_failpoint_then_resume(
    failpoint: str,
    flights_input: Path,
    clean_output: list[tuple[Any, ...]],
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    output = tmp_path / "out.sqlite"
    args = _run_args(flights_input, output)

    killed = ledger_command(
        args, url=url, cwd=tmp_path, env={"LEDGER_FAULT": failpoint}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    resumed = ledger_command(args, url=url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = orjson.loads(resumed.stdout)
    assert summary["attempt"] == 2
    assert summary["status"] == "completed"
    _assert_recovered(url, output, clean_output, killed_attempts=1)

    # The history names the killed attempt as crashed.
    history = ledger_command(
        ["history", summary["run_id"], "--json"], url=url, cwd=tmp_path
    )
    attempts = orjson.loads(history.stdout)["attempts"]
    assert [a["outcome"] for a in attempts] == ["crashed", "completed"]


def _wait_for_checkpoints(url: str, count: int, process: subprocess.Popen[str]) -> None:
    """Waits until the ledger holds `count` checkpoints (or the job ended)."""
    path = parse_ledger_url(url).sqlite_path
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                found = db.execute(
                    "SELECT COUNT(*) FROM stored_events WHERE topic LIKE ?",
                    ("%.BatchCheckpointed",),
                ).fetchone()[0]
        except sqlite3.OperationalError:
            found = 0
        if found >= count:
            return
        time.sleep(0.002)
    pytest.fail(f"the job never reached {count} checkpoints")


def test_repeated_kills_at_random_moments(
    flights_input: Path, clean_output: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    output = tmp_path / "out.sqlite"
    command = [*LEDGER, *_run_args(flights_input, output)]
    env = {**__import__("os").environ, "LEDGER_URL": url}
    env.pop("LEDGER_FAULT", None)
    draw = random.Random(20261204)
    total = 3 * (ROWS // BATCH)

    # Kill at ever later checkpoints, each a random draw past the last one.
    kills = 0
    reached = 0
    while reached < total - 4:
        reached = draw.randint(reached + 1, min(reached + 9, total - 1))
        process = subprocess.Popen(command, cwd=tmp_path, env=env, text=True)
        _wait_for_checkpoints(url, reached, process)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)

    finished = ledger_command(_run_args(flights_input, output), url=url, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert kills >= 3
    _assert_recovered(url, output, clean_output, killed_attempts=kills)


@pytest.mark.postgres
def test_kill_inside_checkpoint_on_postgres(
    postgres_url: str,
    flights_input: Path,
    clean_output: list[tuple[Any, ...]],
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.sqlite"
    args = _run_args(flights_input, output)
    killed = ledger_command(
        args,
        url=postgres_url,
        cwd=tmp_path,
        env={"LEDGER_FAULT": "in_checkpoint:enrich:4"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    resumed = ledger_command(args, url=postgres_url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    _assert_recovered(postgres_url, output, clean_output, killed_attempts=1)

    # The killed transaction left nothing behind: the rolled-back insert
    # only burned notification ids, a gap the read side steps over.
    by_kind: dict[str, int] = defaultdict(int)
    for _, kind, _state in _stored_events(postgres_url):
        by_kind[kind] += 1
    assert by_kind["RunCompleted"] == 1
