"""Decisions about quarantined records, on the run aggregate alone.

The run knows each quarantined record's state, so a decision is refused on
the write side, appending nothing: without a reason, for a record the run
never quarantined, or for one already decided. A discard lands while a
live worker holds the run: the worker applies its appends on top of it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from ledger.controls import ControlRefused
from ledger.messages import quarantine_message
from ledger.quarantine import (
    DISCARDED,
    PENDING,
    PROMOTED,
    WRITTEN,
    PromotionResult,
    RecordDiscarded,
    discard,
    promote,
)
from ledger.run import Run
from ledger.times import BadTime, parse_moment
from ledger.worker import current_worker

PAST = "2000-01-01T00:00:00+00:00"
OTHER_HOST = {"host": "elsewhere", "boot_id": "b", "pid": 1, "pid_started": "1"}


def _run() -> Run:
    return Run.start(
        run_id=uuid4(), job="j", job_version="1", job_ref="j.py",
        input={"name": "f", "path": "/f", "size": 1, "sha256": "0" * 64},
        params={}, input_key="k", steps=["a"],
    )  # fmt: skip


def _quarantined(run: Run, record: int = 7) -> str:
    """Quarantines one record in a failed attempt; returns its id."""
    attempt = run.start_attempt(OTHER_HOST, PAST)
    run.quarantine(attempt, "a", 0, record, "bad", f"record {record}", "x")
    run.fail(attempt, "a", 0, "E", "boom")
    return next(reversed(run.quarantine_states))


def _appended(run: Run) -> int:
    return len(run.collect_events())


def test_a_quarantined_record_is_pending_and_a_discard_settles_it() -> None:
    run = _run()
    first = _quarantined(run)
    assert run.quarantine_states == {first: PENDING}
    _appended(run)

    discard(run, first, "alice", "  a test row  ")
    events = run.collect_events()
    assert [type(e) for e in events] == [RecordDiscarded]
    assert run.quarantine_states == {first: DISCARDED}
    decision = run.quarantine_decisions[first]
    assert (decision["by"], decision["reason"]) == ("alice", "a test row")


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_discard_without_a_reason_is_refused(reason: str) -> None:
    run = _run()
    first = _quarantined(run)
    _appended(run)

    with pytest.raises(ControlRefused, match="a reason is required: pass --reason"):
        discard(run, first, "alice", reason)
    assert _appended(run) == 0
    assert run.quarantine_states[first] == PENDING


def test_a_record_the_run_never_quarantined_is_refused() -> None:
    run = _run()
    _quarantined(run)
    _appended(run)

    with pytest.raises(ControlRefused, match="has no quarantined record"):
        discard(run, str(uuid4()), "alice", "gone")
    assert _appended(run) == 0


def test_a_second_discard_is_refused_and_names_who_decided() -> None:
    run = _run()
    first = _quarantined(run)
    discard(run, first, "alice", "a test row")
    _appended(run)

    with pytest.raises(ControlRefused, match="already discarded by alice"):
        discard(run, first, "bob", "again")
    assert _appended(run) == 0
    assert run.quarantine_decisions[first]["by"] == "alice"


def test_a_promoted_record_cannot_be_discarded() -> None:
    run = _run()
    first = _quarantined(run)

    promote(run, first, "carol", "fixed", PromotionResult(WRITTEN, "a", 1))
    assert run.quarantine_states[first] == PROMOTED
    _appended(run)

    with pytest.raises(ControlRefused, match="promoted by carol"):
        discard(run, first, "alice", "too late")
    assert _appended(run) == 0


def test_a_record_quarantined_again_on_replay_is_kept_once() -> None:
    run = _run()
    first = _quarantined(run)
    discard(run, first, "alice", "a test row")

    # The next attempt replays the batch and quarantines the record again:
    # same id, and the decision stands.
    again = _quarantined(run)
    assert again == first
    assert run.quarantine_states == {first: DISCARDED}


def test_a_consumer_message_is_pending_until_discarded() -> None:
    run = _run()
    attempt = run.start_attempt(OTHER_HOST, PAST)
    kwargs: dict[str, Any] = {
        "attempt": attempt, "batch": 0, "group": "g", "topic": "t",
        "partition": 1, "offset": 30, "reason": "rejected", "error_class": "Reject",
        "detail": "bad", "tries": 1, "crashes": 0, "copied_to": None, "payload": {},
    }  # fmt: skip
    message = str(quarantine_message(run, **kwargs))
    quarantine_message(run, **kwargs)
    assert run.quarantine_states == {message: PENDING}

    # The attempt's worker is on another host and its lease ran out long
    # ago: it is dead, so the decision stops nobody.
    discard(run, message, "alice", "poison")
    assert run.quarantine_states == {message: DISCARDED}


def test_a_discard_lands_while_a_live_worker_holds_the_run() -> None:
    run = _run()
    first = _quarantined(run)
    lease = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    run.start_attempt(current_worker(), lease)
    _appended(run)

    # The worker's next append is refused once and applied again on top.
    discard(run, first, "alice", "a test row")
    assert _appended(run) != []
    assert run.quarantine_states[first] == DISCARDED
    assert run.attempt_open


def test_moments_are_iso_times_or_ages_in_utc() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert parse_moment("2h", label="since", now=now) == now - timedelta(hours=2)
    assert parse_moment("3d", label="since", now=now) == now - timedelta(days=3)
    assert parse_moment("2026-12-04T10:30", label="since") == datetime(
        2026, 12, 4, 10, 30, tzinfo=UTC
    )
    assert parse_moment("2026-12-04T10:30+02:00", label="since") == datetime(
        2026, 12, 4, 8, 30, tzinfo=UTC
    )
    with pytest.raises(BadTime, match="since 'yesterday' is not a time"):
        parse_moment("yesterday", label="since")
