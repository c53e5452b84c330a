"""Properties of the read side, checked by Hypothesis on real stored events.

Whatever the runs did, and however the log is cut into catch-up passes, the
read tables end the same as one rebuild from scratch, and they agree with
the write side's own state.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any
from uuid import uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.config import parse_ledger_url
from ledger.run import Run
from ledger.store import opened
from projections.database import SQLiteDatabase
from projections.runner import catch_up, rebuild
from projections.tables import TABLES
from projections.views import list_attempts, list_quarantine, list_runs

WORKER = {"host": "elsewhere", "boot_id": "", "pid": 1, "pid_started": "1"}

# One attempt: how many batches it checkpoints, how many records each one
# quarantines, and how it ends.
attempts = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.integers(0, 3),
        st.sampled_from(["fail", "crash", "next_step"]),
    ),
    min_size=1,
    max_size=6,
)
runs = st.lists(attempts, min_size=1, max_size=3)
pass_sizes = st.integers(1, 40)


def _play(run: Run, plan: list[tuple[int, int, str]]) -> None:
    """Drives a run through attempts the way the runtime would."""
    for batches, bad, ending in plan:
        point = run.resume_point()
        if point is None:
            return
        attempt = run.start_attempt(WORKER, "2030-01-01T00:00:00+00:00")
        step = point.step
        run.start_step(attempt, step)
        for _ in range(batches):
            batch = run.batches_done.get(step, 0)
            last = (batch + 1) * 10
            run.start_batch(attempt, step, batch, last - 9, "t")
            for offset in range(bad):
                run.quarantine(attempt, step, batch, last - offset, "bad", "d", None)
            run.checkpoint_batch(
                attempt=attempt, step=step, batch=batch, first_record=last - 9,
                last_record=last, position=last, position_kind="row",
                records=10, written=10 - bad, quarantined=bad,
                counters={"seen": 10}, lease_until="t",
            )  # fmt: skip
        if ending == "next_step":
            run.complete_step(attempt, step)
            if run.resume_point() is None:
                run.complete(attempt, dict(run.totals))
                return
            run.fail(attempt, None, None, "Stop", "planned stop")
        elif ending == "fail":
            run.fail(attempt, step, None, "Boom", "planned failure")
        else:
            run.record_crash("worker gone", WORKER)


async def _dump(db: SQLiteDatabase) -> dict[str, list[tuple[str, ...]]]:
    dump = {}
    for table in TABLES:
        rows = await db.fetch(f"SELECT * FROM {table}")
        dump[table] = sorted(tuple(str(v) for v in row.values()) for row in rows)
    return dump


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(runs, pass_sizes)
def test_any_history_projects_like_a_rebuild_and_like_the_write_side(
    plans: list[list[tuple[int, int, str]]], pass_size: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ledger.sqlite"
        written: list[Run] = []
        with opened(parse_ledger_url(f"sqlite:///{path}")) as ledger:
            for plan in plans:
                run = Run.start(
                    run_id=uuid4(), job="prop", job_version="1", job_ref="p.py",
                    input={"name": "f", "path": "/f", "size": 1, "sha256": "0" * 64},
                    params={}, input_key=str(uuid4()), steps=["a", "b"],
                )  # fmt: skip
                _play(run, plan)
                ledger.save(run)
                written.append(ledger.repository.get(run.id))

        async def check() -> tuple[Any, Any, Any, Any]:
            db = SQLiteDatabase(path, "stored_events")
            try:
                await catch_up(db, pass_size=pass_size)
                incremental = await _dump(db)
                views = await list_runs(db, "prop")
                attempt_rows = {
                    v.run_id: await list_attempts(db, v.run_id) for v in views
                }
                quarantined = await list_quarantine(db, "prop", limit=10_000)
                await rebuild(db)
                return incremental, await _dump(db), views, (attempt_rows, quarantined)
            finally:
                await db.close()

        incremental, rebuilt, views, (attempt_rows, quarantined) = asyncio.run(check())

    # Cut any way, the log projects to what one rebuild gives.
    assert incremental == rebuilt

    # The read side agrees with the write side's own state.
    by_id = {str(run.id): run for run in written}
    assert len(views) == len(written)
    for view in views:
        run = by_id[view.run_id]
        assert view.attempts == run.attempt
        assert view.quarantined == run.quarantined
        assert view.batches_done == sum(run.batches_done.values())
        point = run.resume_point()
        if run.is_completed or point is None:
            assert view.resume_point is None
        else:
            assert view.resume_point is not None
            assert (view.resume_point["step"], view.resume_point["batch"]) == (
                point.step,
                point.batch,
            )
        assert [a.attempt for a in attempt_rows[view.run_id]] == list(
            range(1, run.attempt + 1)
        )
    assert quarantined[0] == sum(run.quarantined for run in written)
