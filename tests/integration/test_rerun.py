"""`ledger rerun RUN --from POINT`: keep the work before the point, redo
the rest, with the plan shown first; on the flights job and the test job,
against SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
from conftest import FLIGHTS_JOB, ledger_command, make_flights_zip, write_numbers
from ledger_support import latest_run_id, run_events

NUMBERS_JOB = Path(__file__).parents[1] / "jobs" / "numbers.py"


def _events(url: str, run_id: str) -> list[tuple[str, dict[str, object]]]:
    """The run's stored events: name and the fields the tests look at."""
    return [
        (type(e).__name__, {"step": getattr(e, "step", None)})
        for e in run_events(url, run_id)
    ]


def test_rerun_a_failed_flights_run_from_a_step_keeps_the_steps_before_it(
    tmp_path: Path, ledger_url: str
) -> None:
    # No malformed rows: extract goes through; enrich refuses its first
    # batch holding an incomplete flight, since no reject is allowed.
    source = make_flights_zip(tmp_path / "flights.zip", 3000, malformed=False)
    output = tmp_path / "out" / "flights.sqlite"
    failed = ledger_command(
        ["run", str(FLIGHTS_JOB), "--input", str(source), "--batch-size", "500",
         "--param", f"output={output}", "--param", "max_quarantine_ratio=0"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    run_id = latest_run_id(ledger_url, tmp_path)

    # The plan, and nothing recorded by a dry run.
    before = _events(ledger_url, run_id)
    plan = ledger_command(
        ["rerun", run_id[:8], "--from", "step:enrich", "--dry-run"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [
        f"rerun of run {run_id} from step enrich, batch 0",
        "keep: extract: batches 0-5 (3,000 records)",
        "redo: enrich: from batch 0; load: from the start",
    ]
    assert _events(ledger_url, run_id) == before

    # Without a reason it is refused; with one it runs, keeping extract.
    bare = ledger_command(
        ["rerun", run_id, "--from", "step:enrich"], url=ledger_url, cwd=tmp_path
    )
    assert bare.returncode == 2
    assert "needs a reason" in bare.stderr
    assert _events(ledger_url, run_id) == before
    done = ledger_command(
        ["rerun", run_id, "--from", "step:enrich", "--reason", "reviewed the 18 "
         "incomplete flights", "--as", "erin", "--max-quarantine-ratio", "1",
         "--json", "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert (summary["status"], summary["attempt"]) == ("completed", 2)
    assert summary["resumed_from"] == {
        "step": "enrich", "batch": 0, "after_record": 0, "position": 0,
    }  # fmt: skip

    # Extract was not read again: its batches all belong to attempt 1.
    names = [name for name, _ in _events(ledger_url, run_id)]
    rewound = names.index("RunRewound")
    after = _events(ledger_url, run_id)[rewound:]
    assert {fields["step"] for name, fields in after if name == "BatchStarted"} == {
        "enrich",
        "load",
    }
    with sqlite3.connect(output) as db:
        assert db.execute("SELECT COUNT(*) FROM flights").fetchone()[0] == 2982
    shown = ledger_command(["history", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    view = orjson.loads(shown.stdout)
    assert [(a["action"], a["by"]) for a in view["run"]["actions"]] == [
        ("rerun", "erin")
    ]
    assert view["run"]["actions"][0]["reason"].startswith("from step enrich, batch 0")
    assert view["run"]["counters"]["plane_unknown"] > 0
    assert view["attempts"][1]["resume_from"]["step"] == "enrich"

    # Completed: its staging is gone, so only a rerun from the first step,
    # which keeps nothing, can be done; the output keeps one row per flight.
    kept_lost = ledger_command(
        ["rerun", run_id, "--from", "step:load", "--reason", "again"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert kept_lost.returncode == 2
    assert "keeps step extract's work" in kept_lost.stderr
    assert "--from step:extract" in kept_lost.stderr
    again = ledger_command(
        ["rerun", run_id, "--from", "step:extract", "--reason", "planes file fixed",
         "--max-quarantine-ratio", "1", "--json", "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert orjson.loads(again.stdout)["attempt"] == 3
    with sqlite3.connect(output) as db:
        assert db.execute("SELECT COUNT(*) FROM flights").fetchone()[0] == 2982
    status = ledger_command(["history", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    run = orjson.loads(status.stdout)["run"]
    assert run["state"] == "completed"
    assert run["quarantined"] == 18


def test_rerun_from_a_batch_redoes_only_that_batch_on(
    tmp_path: Path, ledger_url: str
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 100)
    output = tmp_path / "out.sqlite"
    first = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--param", f"output={output}", "--json", "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    run_id = latest_run_id(ledger_url, tmp_path)

    # Batch 7 of the last step (`store`, where a completed run's batch:N
    # points) on: three batches again, nothing before them.
    done = ledger_command(
        ["rerun", run_id, "--from", "batch:7", "--reason", "sink lost rows 71-100",
         "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "keep: double: batches 0-9 (100 records); store: batches 0-6" in (
        done.stdout
    )
    events = _events(ledger_url, run_id)
    rewound = [name for name, _ in events].index("RunRewound")
    assert [name for name, _ in events[rewound:]].count("BatchCheckpointed") == 3
    shown = ledger_command(["history", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    view = orjson.loads(shown.stdout)
    assert view["run"]["state"] == "completed"
    assert [s["records"] for s in view["run"]["steps"]] == [100, 100]
    assert view["attempts"][-1]["batches"] == 3

    # Points that do not exist are refused and record nothing.
    before = _events(ledger_url, run_id)
    for point, expected in (
        ("batch:11", "has no batch 11: batches 0-9 are checkpointed"),
        ("step:nope", "has no step 'nope'; its steps are double, store"),
        ("batch:x", "name it as step:NAME, batch:N or step:NAME/batch:N"),
        ("step:double/batch:-1", "has no batch -1"),
    ):
        refused = ledger_command(
            ["rerun", run_id, "--from", point, "--reason", "try"],
            url=ledger_url, cwd=tmp_path,
        )  # fmt: skip
        assert refused.returncode == 2, point
        assert expected in refused.stderr, refused.stderr
    assert _events(ledger_url, run_id) == before


def test_rerun_failed_only_replays_the_failed_batch_and_promotes_the_quarantine(
    tmp_path: Path, ledger_url: str
) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 25, bad=(3, 12))
    marker, lenient = tmp_path / "fail", tmp_path / "lenient"
    marker.touch()
    output = tmp_path / "out.sqlite"
    failed = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "5",
         "--param", f"output={output}", "--param", f"fail_marker={marker}",
         "--param", "fail_batch=2", "--param", f"lenient_marker={lenient}"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    run_id = latest_run_id(ledger_url, tmp_path)
    marker.unlink()
    before = _events(ledger_url, run_id)

    # The plan, and a dry run records nothing.
    plan = ledger_command(
        ["rerun", run_id, "--failed-only", "--dry-run"], url=ledger_url, cwd=tmp_path
    )
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [
        f"rerun of run {run_id}: failed work only",
        "replay: from step store, batch 2, from row 12 (source position: line 11)",
        "promote: 2 quarantined records (2 not_a_number)",
        "keep: every checkpointed batch",
    ]
    assert _events(ledger_url, run_id) == before

    # The cause is fixed; replay the failed work only.
    lenient.touch()
    done = ledger_command(
        ["rerun", run_id, "--failed-only", "--reason", "parser fixed",
         "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("written by step store") == 2

    # Nothing checkpointed was done again: the new attempt began at the
    # failed batch of store; double was not read again.
    events = _events(ledger_url, run_id)
    again = events[len(before) :]
    started = [f["step"] for name, f in again if name == "BatchStarted"]
    assert set(started) == {"store"}
    assert [name for name, _ in again].count("RecordPromoted") == 2
    with sqlite3.connect(output) as db:
        lines = [row[0] for row in db.execute("SELECT line FROM result ORDER BY 1")]
    assert lines == list(range(1, 26))

    # Nothing failed is left: a second call is refused and records nothing.
    twice = ledger_command(
        ["rerun", run_id, "--failed-only", "--reason", "again"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert twice.returncode == 2
    assert "has no failed work" in twice.stderr
    assert _events(ledger_url, run_id) == events
