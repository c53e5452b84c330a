"""The run aggregate's rules, including properties checked by Hypothesis."""

from __future__ import annotations

from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.controls import ControlRefused, abandon
from ledger.run import CheckpointRefused, Run

WORKER = {"host": "h", "boot_id": "b", "pid": 1, "pid_started": "1"}


def _run(steps: list[str] | None = None) -> Run:
    return Run.start(
        run_id=uuid4(), job="j", job_version="1", job_ref="j.py",
        input={"name": "f", "path": "/f", "size": 1, "sha256": "0" * 64},
        params={}, input_key="k", steps=steps or ["a", "b"],
    )  # fmt: skip


def _checkpoint(run: Run, attempt: int, step: str, batch: int, last: int) -> None:
    run.checkpoint_batch(
        attempt=attempt, step=step, batch=batch, first_record=last - 9,
        last_record=last, position=last, position_kind="row", records=10,
        written=10, quarantined=0, counters={}, lease_until="2030-01-01T00:00:00+00:00",
    )  # fmt: skip


def test_resume_point_follows_checkpoints_and_steps() -> None:
    run = _run()
    attempt = run.start_attempt(WORKER, "t")
    assert run.resume_point() is not None
    assert run.resume_point().batch == 0  # type: ignore[union-attr]

    _checkpoint(run, attempt, "a", 0, 10)
    _checkpoint(run, attempt, "a", 1, 20)
    point = run.resume_point()
    assert point is not None
    assert (point.step, point.batch) == ("a", 2)
    assert point.after is not None
    assert point.after.last_record == 20

    run.complete_step(attempt, "a")
    point = run.resume_point()
    assert point is not None
    assert (point.step, point.batch, point.after) == (
        "b",
        0,
        None,
    )


def test_a_closed_or_stale_attempt_cannot_record() -> None:
    run = _run()
    first = run.start_attempt(WORKER, "t")
    run.fail(first, "a", 0, "E", "boom")
    with pytest.raises(CheckpointRefused, match="not the open attempt"):
        _checkpoint(run, first, "a", 0, 10)
    second = run.start_attempt(WORKER, "t")
    assert second == first + 1
    with pytest.raises(CheckpointRefused):
        _checkpoint(run, first, "a", 0, 10)
    _checkpoint(run, second, "a", 0, 10)


def test_checkpoints_never_move_backwards() -> None:
    run = _run()
    attempt = run.start_attempt(WORKER, "t")
    _checkpoint(run, attempt, "a", 0, 10)
    with pytest.raises(CheckpointRefused, match="expects batch 1"):
        _checkpoint(run, attempt, "a", 0, 10)
    with pytest.raises(CheckpointRefused, match="does not move past"):
        _checkpoint(run, attempt, "a", 1, 5)


def test_a_completed_run_takes_no_new_attempt() -> None:
    run = _run(["a"])
    attempt = run.start_attempt(WORKER, "t")
    with pytest.raises(CheckpointRefused, match="still has steps"):
        run.complete(attempt, {})
    run.complete_step(attempt, "a")
    run.complete(attempt, {})
    with pytest.raises(CheckpointRefused, match="already completed"):
        run.start_attempt(WORKER, "t")


def test_quarantine_ids_are_stable_per_record() -> None:
    run = _run()
    attempt = run.start_attempt(WORKER, "t")
    run.quarantine(attempt, "a", 0, 7, "bad", "d", None)
    run.quarantine(attempt, "a", 0, 8, "bad", "d", None)
    ids = [e.quarantine_id for e in run.pending_events if hasattr(e, "quarantine_id")]
    assert len(set(ids)) == 2
    twin = Run.start(
        run_id=run.id, job="j", job_version="1", job_ref="j.py", input={},
        params={}, input_key="k", steps=["a"],
    )  # fmt: skip
    twin_attempt = twin.start_attempt(WORKER, "t")
    twin.quarantine(twin_attempt, "a", 0, 7, "bad", "d", None)
    assert twin.pending_events[-1].quarantine_id == ids[0]  # type: ignore[attr-defined]


# Each attempt checkpoints some batches, then fails or crashes; the next
# attempt must start exactly where the last committed checkpoint left off.
attempt_plans = st.lists(
    st.tuples(st.integers(0, 6), st.sampled_from(["fail", "crash", "step"])),
    min_size=1,
    max_size=8,
)


@given(attempt_plans)
def test_every_attempt_resumes_right_after_the_last_checkpoint(
    plans: list[tuple[int, str]],
) -> None:
    steps = ["a", "b", "c"]
    run = _run(steps)
    done: dict[str, int] = {}
    for batches, ending in plans:
        if run.resume_point() is None:
            break
        expected = run.resume_point()
        attempt = run.start_attempt(WORKER, "t")
        assert expected is not None
        assert run.resume_point() == expected
        step = expected.step
        assert expected.batch == done.get(step, 0)
        for _ in range(batches):
            batch = done.get(step, 0)
            _checkpoint(run, attempt, step, batch, (batch + 1) * 10)
            done[step] = batch + 1
        if ending == "step":
            run.complete_step(attempt, step)
            if run.resume_point() is None:
                run.complete(attempt, {})
                break
            run.fail(attempt, None, None, "Stop", "planned")
        elif ending == "fail":
            run.fail(attempt, step, done.get(step, 0), "E", "boom")
        else:
            run.record_crash("gone", WORKER)

    # Attempts are numbered 1..n with no gap, and the checkpoint history
    # per step is the contiguous range 0..done-1.
    numbers = [
        e.attempt for e in run.pending_events if type(e).__name__ == "AttemptStarted"
    ]  # type: ignore[attr-defined]
    assert numbers == list(range(1, len(numbers) + 1))
    for step in steps:
        batches = [
            e.batch  # type: ignore[attr-defined]
            for e in run.pending_events
            if type(e).__name__ == "BatchCheckpointed" and e.step == step  # type: ignore[attr-defined]
        ]
        assert batches == list(range(done.get(step, 0)))


def test_a_late_or_repeated_failure_report_changes_nothing() -> None:
    run = _run(["a"])
    attempt = run.start_attempt({"pid": 1}, "")
    assert run.fail(attempt, "a", 0, "Boom", "first report")
    events = len(run.pending_events)

    # The same failure seen twice, and a failure of an older attempt after
    # a newer one completed: neither appends anything.
    assert not run.fail(attempt, "a", 0, "Boom", "second report")
    second = run.start_attempt({"pid": 2}, "")
    _checkpoint(run, second, "a", 0, 10)
    run.complete_step(second, "a")
    run.complete(second, {})
    assert not run.fail(attempt, "a", 0, "Boom", "late report")
    assert not run.fail(second, "a", 0, "Boom", "after success")
    assert run.status == "completed"
    assert len(run.pending_events) == events + 4

    # A report for an attempt that never started is a bug, not a late one.
    with pytest.raises(CheckpointRefused):
        run.fail(second + 1, "a", 0, "Boom", "from the future")


def test_abandon_closes_the_attempt_and_refuses_what_makes_no_sense() -> None:
    run = _run(["a"])
    attempt = run.start_attempt({"pid": 1}, "")
    with pytest.raises(ControlRefused, match="needs a reason"):
        abandon(run, "alice", "  ")
    abandon(run, "alice", "node lost")
    assert (run.status, run.attempt_open) == ("abandoned", False)
    with pytest.raises(CheckpointRefused):
        run.start_batch(attempt, "a", 0, 1, "")
    with pytest.raises(ControlRefused, match="already abandoned"):
        abandon(run, "bob", "again")

    # A new worker resumes it; a completed run cannot be abandoned.
    second = run.start_attempt({"pid": 2}, "")
    _checkpoint(run, second, "a", 0, 10)
    run.complete_step(second, "a")
    run.complete(second, {})
    with pytest.raises(ControlRefused, match="completed"):
        abandon(run, "carol", "too late")
