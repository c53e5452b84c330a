"""The consumer's batch logic without a broker: order, retries, poison,
suspects after a crash, and where a partition resumes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.assignment import choose_start
from consumers.batch import handle_batch, split_suspects
from consumers.job import ConsumerJob, Message, QuarantinePolicy, RetryPolicy
from ledger import Reject
from ledger.errors import LedgerError
from ledger.messages import (
    OffsetConventionError,
    checkpoint_messages,
    crash_count,
    crashed_alone,
    start_messages,
)
from ledger.run import Run


class Numbers(ConsumerJob):
    """Values say how to behave: 'ok', 'reject', 'raise', or 'flaky:N'
    (raises on the first N tries of that message, then works)."""

    name = "numbers"
    version = "1"
    group_id = "g"
    topics = ("t",)
    retry = RetryPolicy(attempts=3, backoff_seconds=0)
    quarantine = QuarantinePolicy(max_crashes=2)

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, int, int]] = Counter()

    def handle(self, message: Message, counters: Counter[str]) -> Any:
        key = (message.topic, message.partition, message.offset)
        self.calls[key] += 1
        kind = (message.value or b"").decode()
        if kind == "reject":
            raise Reject("bad", "marked bad")
        if kind == "raise":
            raise RuntimeError("always")
        if kind.startswith("flaky:") and self.calls[key] <= int(kind[6:]):
            raise RuntimeError("not yet")
        return message.offset

    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        return len(outputs)


def message(partition: int, offset: int, kind: str = "ok") -> Message:
    return Message("t", partition, offset, None, kind.encode())


def new_run() -> tuple[Run, int]:
    run = Run.start(
        run_id=uuid4(), job="numbers", job_version="1", job_ref="numbers.py",
        input={}, params={}, input_key="k", steps=["consume"],
    )  # fmt: skip
    return run, run.start_attempt({"host": "h", "pid": 1}, "")


def crash_after(run: Run, attempt: int, ranges: list[dict[str, Any]]) -> int:
    """A batch started and its worker died: a new attempt begins."""
    start_messages(run, attempt, ranges, "")
    run.record_crash("pid 1 is gone", {})
    return run.start_attempt({"host": "h", "pid": 2}, "")


kinds = st.sampled_from(["ok", "ok", "ok", "reject", "raise", "flaky:1", "flaky:2"])
partitions = st.dictionaries(
    st.integers(0, 3), st.lists(kinds, min_size=1, max_size=15), min_size=1
)


@settings(max_examples=150, deadline=None)
@given(partitions, st.sets(st.integers(0, 3)), st.integers(0, 20))
def test_every_message_is_handled_or_quarantined_in_order(
    layout: dict[int, list[str]], revoked: set[int], revoke_after: int
) -> None:
    job = Numbers()
    run, _ = new_run()
    batch = {
        f"t[{p}]": [message(p, 10 + i, kind) for i, kind in enumerate(values)]
        for p, values in layout.items()
    }

    # A partition revoked mid-batch stops after `revoke_after` messages.
    seen: Counter[str] = Counter()

    def stopped(key: str) -> bool:
        seen[key] += 1
        return int(key[2:-1]) in revoked and seen[key] > revoke_after

    handled = handle_batch(job, run, batch, stopped=stopped)

    for key, messages in batch.items():
        partition = int(key[2:-1])
        limit = revoke_after if partition in revoked else len(messages)
        expected = messages[:limit]
        outputs = [m.offset for m, _ in handled.outputs if m.partition == partition]
        poison = [p.message.offset for p in handled.poison
                  if p.message.partition == partition]  # fmt: skip

        # Each message up to the stop is either output or poison, once, and
        # outputs keep offset order.
        assert sorted(outputs + poison) == [m.offset for m in expected]
        assert outputs == sorted(outputs)
        if expected:
            assert handled.done[key] == (expected[0].offset, expected[-1].offset)
        else:
            assert key not in handled.done

        # Only what fails every try is quarantined; flaky messages recover
        # within the policy's three tries.
        for m in expected:
            kind = (m.value or b"").decode()
            assert (m.offset in poison) == (kind in ("reject", "raise"))
            if kind == "raise":
                assert job.calls[("t", partition, m.offset)] == 3
            if kind == "reject":
                assert job.calls[("t", partition, m.offset)] == 1


def test_quarantine_records_the_error_class_and_tries() -> None:
    job = Numbers()
    run, _ = new_run()
    handled = handle_batch(
        job, run, {"t[0]": [message(0, 5, "raise")]}, stopped=lambda _: False
    )
    (poison,) = handled.poison
    assert (poison.reason, poison.error_class, poison.tries) == (
        "handler-error",
        "RuntimeError",
        3,
    )


def test_a_message_that_crashed_twice_alone_is_quarantined_unhandled() -> None:
    job = Numbers()
    run, attempt = new_run()
    attempt = crash_after(run, attempt, [{"partition": "t[0]", "first": 0, "last": 9}])

    # After one crash the batch's messages are suspects, handled alone.
    batch = {"t[0]": [message(0, o) for o in range(5, 12)]}
    parts = list(split_suspects(run, batch))
    assert [list(p.items()) for p in parts[:5]] == [
        [("t[0]", [message(0, o)])] for o in range(5, 10)
    ]
    assert parts[5] == {"t[0]": [message(0, 10), message(0, 11)]}

    # The suspect at offset 7 crashes alone: once is not enough (a kill from
    # outside looks the same), so it is handled again.
    alone = [{"partition": "t[0]", "first": 7, "last": 7}]
    attempt = crash_after(run, attempt, alone)
    assert (crash_count(run, "t", 0, 7), crashed_alone(run, "t", 0, 7)) == (2, 1)
    assert crash_count(run, "t", 0, 8) == 1
    handled = handle_batch(job, run, {"t[0]": [message(0, 7)]}, stopped=lambda _: False)
    assert handled.poison == []

    # It crashes alone a second time: now it is poison, not handled again.
    attempt = crash_after(run, attempt, alone)
    calls = job.calls[("t", 0, 7)]
    handled = handle_batch(job, run, {"t[0]": [message(0, 7)]}, stopped=lambda _: False)
    (poison,) = handled.poison
    assert (poison.reason, poison.crashes, poison.tries) == ("crashed-worker", 2, 0)
    assert job.calls[("t", 0, 7)] == calls


def test_crash_ranges_behind_a_checkpoint_are_forgotten() -> None:
    run, attempt = new_run()
    attempt = crash_after(run, attempt, [{"partition": "t[0]", "first": 0, "last": 9}])
    assert run.crashed_ranges
    batch = start_messages(
        run, attempt, [{"partition": "t[0]", "first": 0, "last": 9}], ""
    )
    checkpoint_messages(
        run, attempt=attempt, batch=batch,
        ranges=[{"partition": "t[0]", "first": 0, "last": 9, "next": 10, "lag": 0}],
        records=10, written=10, quarantined=0, counters={}, lease_until="",
    )  # fmt: skip
    assert run.crashed_ranges == []
    assert run.partitions == {"t[0]": 10}


def test_a_position_in_the_last_offset_convention_is_refused() -> None:
    run, attempt = new_run()
    with pytest.raises(OffsetConventionError, match="next offset to read, which is 10"):
        checkpoint_messages(
            run, attempt=attempt, batch=0,
            ranges=[{"partition": "t[0]", "first": 0, "last": 9, "next": 9, "lag": 0}],
            records=10, written=10, quarantined=0, counters={}, lease_until="",
        )  # fmt: skip
    assert not [e for e in run.pending_events if "Checkpointed" in type(e).__name__]


@pytest.mark.parametrize(
    ("ledger", "kafka", "expected"),
    [
        (100, 100, (100, "ledger", "none")),
        (100, 40, (100, "ledger", "behind")),
        (100, None, (100, "ledger", "behind")),
        (100, 250, (100, "ledger", "ahead")),
        (None, 40, (40, "kafka", "none")),
        (None, None, None),
    ],
)
def test_the_ledger_decides_where_a_partition_resumes(
    ledger: int | None, kafka: int | None, expected: tuple[int, str, str] | None
) -> None:
    assert choose_start(ledger, kafka) == expected


def test_policies_refuse_settings_that_make_no_sense() -> None:
    with pytest.raises(LedgerError, match="at least once"):
        RetryPolicy(attempts=0)
    with pytest.raises(LedgerError, match="max_crashes"):
        QuarantinePolicy(max_crashes=0)
    assert RetryPolicy(backoff_seconds=0.1, backoff_max_seconds=0.3).delay(5) == 0.3


def test_one_crash_of_a_whole_batch_quarantines_nothing() -> None:
    """Even with max_crashes=1, a crash of a batch of many messages blames
    none of them: only a crash with the message alone does."""

    class Strict(Numbers):
        quarantine = QuarantinePolicy(max_crashes=1)

    job = Strict()
    run, attempt = new_run()
    crash_after(run, attempt, [{"partition": "t[0]", "first": 0, "last": 9}])
    batch = {"t[0]": [message(0, o) for o in range(10)]}
    handled = handle_batch(job, run, batch, stopped=lambda _: False)
    assert handled.poison == []
    assert [m.offset for m, _ in handled.outputs] == list(range(10))
