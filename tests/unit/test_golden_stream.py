"""A recorded event stream, replayed through the read side and the mapper.

`tests/golden/flights_small.jsonl` holds the events that real runs of the
flights job stored: one clean run, and one run whose first attempt failed
and whose second attempt resumed it to completion. Replaying the file,
rather than running the job, proves that streams written by earlier
versions of the ledger still project to the read model and still decode
into aggregates. Every expected fact is read from the file itself, without
the ledger's code, so the tests hold for any faithful recording.

Regenerate the file only when the event model changed on purpose (with a
new class_version and an upcaster, see schemas/README.md):

    LEDGER_REGENERATE_GOLDEN=1 pytest tests/unit/test_golden_stream.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import orjson
import pytest
from conftest import FLIGHTS_JOB, REPO
from eventsourcing.persistence import StoredEvent
from test_schemas import FlakyFlights

from ledger import JobFailed
from ledger.config import parse_ledger_url
from ledger.input_runs import InputRuns
from ledger.loader import load_job
from ledger.run import Run
from ledger.runtime import describe_input, resolve_params, run_job
from ledger.store import Ledger, opened
from projections.database import SQLiteDatabase
from projections.explain import explain
from projections.runner import catch_up
from projections.tables import TABLES
from projections.views import (
    AttemptView,
    RunView,
    find_run,
    list_attempts,
    list_quarantine,
    list_runs,
)

GOLDEN = REPO / "tests" / "golden" / "flights_small.jsonl"
EVENTS_TABLE = "stored_events"
RUN_TOPIC = "ledger.run:Run."

# The events that close an attempt, and the outcome each one records.
OUTCOMES = {
    "RunCompleted": "completed",
    "RunFailed": "failed",
    "AttemptCrashed": "crashed",
}

T = TypeVar("T")
Line = dict[str, Any]

# A stored_events row: rowid (notification id), stream, version, topic, state.
Row = tuple[int, str, int, str, bytes]


def record_golden_stream(source_path: Path, folder: Path, target: Path) -> None:
    """Runs the flights job as the golden stream describes; stores its log."""
    source = describe_input(source_path)
    url = f"sqlite:///{folder / 'ledger.sqlite'}"
    with opened(parse_ledger_url(url)) as ledger:
        # One clean run.
        flights = load_job(str(FLIGHTS_JOB))
        params = resolve_params(
            flights, {"batch_size": "1000", "output": str(folder / "clean.sqlite")}
        )
        run_job(ledger, flights, "examples/flights.py", source, params)

        # Another run: its output refuses batch 1 of enrich, then recovers.
        flaky_params = resolve_params(
            FlakyFlights(None),
            {"batch_size": "1000", "output": str(folder / "flaky.sqlite")},
        )
        flaky_ref = FlakyFlights.__module__
        with pytest.raises(JobFailed):
            run_job(
                ledger, FlakyFlights(("enrich", 1)), flaky_ref, source, flaky_params
            )
        run_job(ledger, FlakyFlights(None), flaky_ref, source, flaky_params)

        notifications = ledger.recorder.select_notifications(start=1, limit=100_000)

    lines = [
        orjson.dumps(
            {
                "id": n.id,
                "originator_id": str(n.originator_id),
                "topic": n.topic,
                "state": orjson.loads(n.state),
            }
        )
        for n in notifications
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def golden(small_flights: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Line]:
    if os.environ.get("LEDGER_REGENERATE_GOLDEN") == "1":
        folder = tmp_path_factory.mktemp("golden")
        record_golden_stream(small_flights, folder, GOLDEN)
    if not GOLDEN.is_file():
        pytest.fail(
            f"{GOLDEN} is missing: record it with LEDGER_REGENERATE_GOLDEN=1 "
            "pytest tests/unit/test_golden_stream.py",
            pytrace=False,
        )
    return [orjson.loads(line) for line in GOLDEN.read_bytes().splitlines()]


# What the golden lines say, read without the ledger's code.


@dataclass
class RunStory:
    """One run as its golden lines tell it."""

    run_id: str
    job: str
    steps: list[str]
    outcomes: dict[int, str] = field(default_factory=dict)
    starts: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: dict[int, dict[str, Any]] = field(default_factory=dict)
    step_states: dict[str, str] = field(default_factory=dict)
    checkpoints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    quarantined: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def attempts(self) -> int:
        return max(self.outcomes, default=0)

    @property
    def state(self) -> str:
        return self.outcomes[self.attempts] if self.outcomes else "started"

    @property
    def completed_steps(self) -> list[str]:
        return [s for s in self.steps if self.step_states.get(s) == "completed"]

    def all_checkpoints(self) -> list[dict[str, Any]]:
        return [c for step in self.steps for c in self.checkpoints.get(step, [])]

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(q["reason"] for q in self.quarantined.values()))

    def resume_point(self) -> dict[str, Any] | None:
        """The read model's resume point: after the step's last checkpoint."""
        if self.state == "completed":
            return None
        for step in self.steps:
            if step in self.completed_steps:
                continue
            done = self.checkpoints.get(step, [])
            last = done[-1] if done else None
            return {
                "step": step,
                "batch": last["batch"] + 1 if last else 0,
                "from_record": last["last_record"] + 1 if last else 1,
                "position": last["position"] if last else 0,
                "position_kind": last["position_kind"] if last else None,
            }
        return None


def read_stories(lines: Sequence[Line]) -> dict[str, RunStory]:
    stories: dict[str, RunStory] = {}
    for line in lines:
        if not line["topic"].startswith(RUN_TOPIC):
            continue
        kind = line["topic"].removeprefix(RUN_TOPIC)
        state = line["state"]
        if kind == "Started":
            stories[line["originator_id"]] = RunStory(
                run_id=line["originator_id"], job=state["job"], steps=state["steps"]
            )
            continue

        story = stories[line["originator_id"]]
        if kind == "AttemptStarted":
            story.outcomes[state["attempt"]] = "running"
            story.starts[state["attempt"]] = state
        elif kind in OUTCOMES:
            story.outcomes[state["attempt"]] = OUTCOMES[kind]
            if kind == "RunFailed":
                story.failures[state["attempt"]] = state
        elif kind == "StepStarted":
            story.step_states[state["step"]] = "running"
        elif kind == "StepCompleted":
            story.step_states[state["step"]] = "completed"
        elif kind == "StepFailed":
            story.step_states[state["step"]] = "failed"
        elif kind == "BatchCheckpointed":
            story.checkpoints.setdefault(state["step"], []).append(state)
        elif kind == "RecordQuarantined":
            story.quarantined[state["quarantine_id"]] = state
    return stories


def resume_cut(lines: Sequence[Line]) -> int:
    """The index of the first line that resumes a failed run."""
    return next(
        index
        for index, line in enumerate(lines)
        if line["topic"] == f"{RUN_TOPIC}AttemptStarted"
        and line["state"]["attempt"] > 1
    )


# Replaying the golden lines into a stored-events table and the read side.


def stream_versions(lines: Sequence[Line]) -> list[int]:
    """Each line's originator_version: its place in its stream, from 1."""
    seen: Counter[str] = Counter()
    versions = []
    for line in lines:
        seen[line["originator_id"]] += 1
        versions.append(seen[line["originator_id"]])
    return versions


def stored_rows(lines: Sequence[Line]) -> list[Row]:
    """The golden lines as the library's SQLite recorder stores them."""
    return [
        (
            line["id"],
            UUID(line["originator_id"]).hex,
            version,
            line["topic"],
            orjson.dumps(line["state"]),
        )
        for line, version in zip(lines, stream_versions(lines), strict=True)
    ]


def insert_rows(path: Path, rows: Sequence[Row]) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (originator_id TEXT, "
            "originator_version INTEGER, topic TEXT, state BLOB, "
            "PRIMARY KEY (originator_id, originator_version))"
        )
        db.executemany(
            f"INSERT INTO {EVENTS_TABLE} (rowid, originator_id, originator_version, "
            "topic, state) VALUES (?, ?, ?, ?, ?)",
            rows,
        )


def read(path: Path, query: Callable[[SQLiteDatabase], Awaitable[T]]) -> T:
    """Runs one read-side coroutine against the database at `path`."""

    async def on_database() -> T:
        db = SQLiteDatabase(path, EVENTS_TABLE)
        try:
            return await query(db)
        finally:
            await db.close()

    return asyncio.run(on_database())


def replay(path: Path, rows: Sequence[Row]) -> int:
    insert_rows(path, rows)
    return read(path, catch_up)


def dump_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {
            table: sorted(map(tuple, db.execute(f"SELECT * FROM {table}")), key=repr)
            for table in TABLES
        }


def view_of(path: Path, run_id: str) -> tuple[RunView, list[AttemptView]]:
    async def query(db: SQLiteDatabase) -> tuple[RunView, list[AttemptView]]:
        return await find_run(db, run_id), await list_attempts(db, run_id)

    return read(path, query)


def rebuild(ledger: Ledger, lines: Sequence[Line]) -> dict[UUID, Any]:
    """Decodes each line with the write side's mapper, then applies it."""
    aggregates: dict[UUID, Any] = {}
    for line, version in zip(lines, stream_versions(lines), strict=True):
        stored = StoredEvent(
            originator_id=UUID(line["originator_id"]),
            originator_version=version,
            topic=line["topic"],
            state=orjson.dumps(line["state"]),
        )
        event = ledger.mapper.to_domain_event(stored)
        assert event.timestamp.isoformat() == line["state"]["timestamp"]

        # The library checks that each event is its aggregate's next one.
        key = event.originator_id
        aggregates[key] = event.mutate(aggregates.get(key))
    return aggregates


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """An empty ledger, for its mapper: the write side's decoding."""
    url = f"sqlite:///{tmp_path / 'ledger' / 'ledger.sqlite'}"
    with opened(parse_ledger_url(url)) as opened_ledger:
        yield opened_ledger


@pytest.fixture
def replayed(golden: list[Line], tmp_path: Path) -> Path:
    """A read database that has projected the whole golden stream."""
    path = tmp_path / "read.sqlite"
    assert replay(path, stored_rows(golden)) == len(golden)
    return path


# The tests.


def test_golden_stream_holds_a_clean_run_and_a_resumed_failure(
    golden: list[Line],
) -> None:
    ids = [line["id"] for line in golden]
    assert ids == sorted(set(ids))

    # What the rest of this module relies on the recording to contain.
    outcomes = sorted(
        tuple(story.outcomes.values()) for story in read_stories(golden).values()
    )
    assert outcomes == [("completed",), ("failed", "completed")]
    assert all(story.quarantined for story in read_stories(golden).values())


def test_replayed_read_model_matches_the_recorded_runs(
    golden: list[Line], replayed: Path
) -> None:
    for run_id, story in read_stories(golden).items():
        run, attempts = view_of(replayed, run_id)

        # The run: state, attempts, what is done and what is left.
        assert (run.job, run.state, run.attempts) == (
            story.job,
            story.state,
            story.attempts,
        )
        assert run.resume_point == story.resume_point()
        assert run.batches_done == len(story.all_checkpoints())
        counters: Counter[str] = Counter()
        for checkpoint in story.all_checkpoints():
            counters.update(checkpoint["counters"])
        assert run.counters == dict(counters)

        # Each step's totals are the sums of its checkpoints.
        for view in run.steps:
            done = story.checkpoints.get(view.step, [])
            assert (view.state, view.batches) == (
                story.step_states.get(view.step, "pending"),
                len(done),
            )
            assert view.records == sum(c["records"] for c in done)
            assert view.written == sum(c["written"] for c in done)
            assert view.quarantined == sum(c["quarantined"] for c in done)

        # Each attempt: its outcome, where it resumed, what it checkpointed.
        assert [a.attempt for a in attempts] == sorted(story.outcomes)
        for attempt in attempts:
            start = story.starts[attempt.attempt]
            assert attempt.outcome == story.outcomes[attempt.attempt]
            assert attempt.resume_from == start["resume"]
            assert attempt.worker == start["worker"]
            assert attempt.batches == sum(
                1 for c in story.all_checkpoints() if c["attempt"] == attempt.attempt
            )
            failure = story.failures.get(attempt.attempt)
            assert (attempt.failed_step, attempt.failed_batch, attempt.error_class) == (
                (failure["step"], failure["batch"], failure["error_class"])
                if failure
                else (None, None, None)
            )

        # Quarantine: once per record, counted by reason.
        assert run.quarantined_by_reason == story.by_reason()
        assert run.quarantined == len(story.quarantined)


def test_replayed_quarantine_lists_every_recorded_record(
    golden: list[Line], replayed: Path
) -> None:
    stories = read_stories(golden).values()

    async def quarantine(db: SQLiteDatabase) -> dict[str | None, Any]:
        jobs = [None, *sorted({story.job for story in stories})]
        return {job: await list_quarantine(db, job, limit=10_000) for job in jobs}

    listed = read(replayed, quarantine)
    total, _ = listed.pop(None)
    assert total == sum(len(story.quarantined) for story in stories)
    for job, (count, views) in listed.items():
        recorded = {
            (story.run_id, q["step"], q["record"], q["reason"], q["attempt"])
            for story in stories
            if story.job == job
            for q in story.quarantined.values()
        }
        assert count == len(recorded)
        assert {
            (v.run_id, v.step, v.record, v.reason, v.attempt) for v in views
        } == recorded


def test_replayed_failed_run_explains_its_resume_before_it_resumes(
    golden: list[Line], tmp_path: Path
) -> None:
    cut = resume_cut(golden)
    before = golden[:cut]
    path = tmp_path / "ledger.sqlite"
    replay(path, stored_rows(golden)[:cut])

    # The failed run, as the log stood just before its resume.
    resumed_id = golden[cut]["originator_id"]
    story = read_stories(before)[resumed_id]
    run, attempts = view_of(path, resumed_id[:8])
    assert run.state == "failed"
    point = story.resume_point()
    assert point is not None
    assert run.resume_point == point

    # The read model's resume point is where the next attempt resumed.
    resumed_at = golden[cut]["state"]["resume"]
    assert resumed_at == {
        "step": point["step"],
        "batch": point["batch"],
        "after_record": point["from_record"] - 1,
        "position": point["position"],
    }

    # One sentence: what failed, what is done, where it resumes, what to run.
    failure = story.failures[story.attempts]
    done = story.completed_steps
    sentence = explain(run, attempts)
    phrases = [
        f"Run {resumed_id[:8]} of {story.job} failed on attempt {story.attempts}",
        f"in step {failure['step']}, batch {failure['batch']} with "
        f"{failure['error_class']}",
        f"{len(done)} of {len(story.steps)} steps done ({', '.join(done)})",
        f"{len(story.quarantined):,} records quarantined",
        f"it will resume at step {point['step']}, batch {point['batch']}, from row "
        f"{point['from_record']:,}",
        f"recover with `ledger resume {resumed_id[:8]}`",
    ]
    assert [p for p in phrases if p not in sentence] == []


def test_replayed_completed_runs_explain_nothing_to_recover(
    golden: list[Line], replayed: Path
) -> None:
    async def latest(db: SQLiteDatabase) -> list[RunView]:
        return await list_runs(db)

    stories = read_stories(golden)
    latest_runs = read(replayed, latest)
    assert sorted(run.job for run in latest_runs) == sorted(
        story.job for story in stories.values()
    )
    for run in latest_runs:
        story = stories[run.run_id]
        assert run.state == "completed"
        last_step = story.steps[-1]
        written = sum(c["written"] for c in story.checkpoints[last_step])
        reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(story.by_reason().items()))
        sentence = explain(run, view_of(replayed, run.run_id)[1])
        phrases = [
            f"completed on attempt {story.attempts}",
            f"all {len(story.steps)} steps done",
            f"{written:,} records written by {last_step}",
            f"{len(story.quarantined):,} records quarantined ({reasons})",
            "nothing to recover",
        ]
        assert [p for p in phrases if p not in sentence] == []


def test_replaying_in_two_parts_equals_one_pass(
    golden: list[Line], tmp_path: Path
) -> None:
    rows = stored_rows(golden)
    whole = tmp_path / "whole.sqlite"
    replay(whole, rows)
    expected = dump_tables(whole)
    assert expected["proj_runs"]

    # Split in the middle, at the resume, and next to either end.
    for cut in sorted({1, len(rows) // 2, resume_cut(golden), len(rows) - 1}):
        path = tmp_path / f"split-{cut}.sqlite"
        first = replay(path, rows[:cut])
        second = replay(path, rows[cut:])
        assert (first, second) == (cut, len(rows) - cut)
        assert dump_tables(path) == expected, f"split at line {cut}"


def test_golden_events_decode_and_rebuild_their_aggregates(
    golden: list[Line], ledger: Ledger
) -> None:
    aggregates = rebuild(ledger, golden)

    # Each run ends in the state its last outcome event records.
    stories = read_stories(golden)
    runs = {str(k): a for k, a in aggregates.items() if isinstance(a, Run)}
    assert set(runs) == set(stories)
    for run_id, run in runs.items():
        story = stories[run_id]
        assert (run.status, run.attempt) == (story.state, story.attempts)
        assert not run.attempt_open
        assert run.completed_steps == story.completed_steps
        assert run.quarantined_by_reason == story.by_reason()
        totals: Counter[str] = Counter()
        for checkpoint in story.all_checkpoints():
            step = checkpoint["step"]
            totals[f"{step}.records"] += checkpoint["records"]
            totals[f"{step}.written"] += checkpoint["written"]
            totals.update(checkpoint["counters"])
        assert run.totals == dict(totals)

    # Each input version's index lists its runs in the order they were added.
    indexes = {k: a for k, a in aggregates.items() if isinstance(a, InputRuns)}
    assert len(indexes) + len(runs) == len(aggregates)
    for index_id, index in indexes.items():
        assert index.run_ids == [
            line["state"]["run_id"]
            for line in golden
            if line["originator_id"] == str(index_id)
            and line["topic"] == "ledger.input_runs:InputRuns.RunAdded"
        ]


def test_rebuilt_failed_run_resumes_where_its_next_attempt_did(
    golden: list[Line], ledger: Ledger
) -> None:
    cut = resume_cut(golden)
    run = rebuild(ledger, golden[:cut])[UUID(golden[cut]["originator_id"])]

    assert isinstance(run, Run)
    assert (run.status, run.attempt_open) == ("failed", False)
    point = run.resume_point()
    assert point is not None
    assert point.as_dict() == golden[cut]["state"]["resume"]
