"""Promotions of quarantined records, on the run aggregate and a tiny job.

The run refuses, appending nothing, a promotion of a record it never
quarantined, of one discarded or already promoted, and while a live
worker holds it. The outcome settles the record (written, rejected: a
new pending record named after its lineage) or leaves it pending
(failed). A file job's record is read again from its step's source, else
taken from its payload only when that is the whole record, and goes on
through every later step with each step's output as the next one's data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4, uuid5

import pytest

from ledger.attempt import PAYLOAD_PREVIEW_CHARS
from ledger.checkpoint import Checkpoint
from ledger.controls import ControlRefused
from ledger.job import REDACTED, InputVersion, Job, Record, Reject, RunContext, Step
from ledger.promotion import FilePromotion, PromotionRefused, payload_is_whole
from ledger.quarantine import (
    DISCARDED,
    FAILED,
    PENDING,
    PROMOTED,
    REJECTED,
    WRITTEN,
    PromotionResult,
    RecordPromoted,
    RecordRequarantined,
    Requarantine,
    discard,
    promote,
)
from ledger.run import Run
from ledger.worker import current_worker

PAST = "2000-01-01T00:00:00+00:00"
OTHER_HOST = {"host": "elsewhere", "boot_id": "b", "pid": 1, "pid_started": "1"}
SOURCE = InputVersion(name="n", path="/n", size=1, sha256="0" * 64)
AGAIN = Requarantine(
    step="a", batch=0, record=7, reason="bad", detail="still", payload=7
)


def _run(steps: list[str] | None = None, batch_size: int = 3) -> Run:
    return Run.start(
        run_id=uuid4(), job="j", job_version="1", job_ref="j.py",
        input=SOURCE.as_dict(), params={"batch_size": batch_size}, input_key="k",
        steps=steps or ["a"],
    )  # fmt: skip


def _quarantined(run: Run, record: int = 7) -> str:
    """Quarantines one record in a failed attempt; returns its id."""
    attempt = run.start_attempt(OTHER_HOST, PAST)
    run.quarantine(attempt, "a", 0, record, "bad", f"record {record}", "x")
    run.fail(attempt, "a", 0, "E", "boom")
    return next(reversed(run.quarantine_states))


def _appended(run: Run) -> list[Any]:
    return list(run.collect_events())


def test_a_written_promotion_settles_the_record() -> None:
    run = _run()
    first = _quarantined(run)
    _appended(run)

    assert promote(run, first, "alice", "  ", PromotionResult(WRITTEN, "a", 1)) is None
    events = _appended(run)
    assert [type(e) for e in events] == [RecordPromoted]
    assert (events[0].promotion, events[0].outcome, events[0].reason) == (
        1, WRITTEN, "promoted",
    )  # fmt: skip
    assert run.quarantine_states == {first: PROMOTED}
    assert run.quarantine_decisions[first]["by"] == "alice"


def test_a_rejected_promotion_quarantines_the_record_again_with_its_lineage() -> None:
    run = _run()
    first = _quarantined(run)
    _appended(run)

    result = PromotionResult(REJECTED, "a", 0, "Reject", "bad: still", AGAIN)
    new_id = promote(run, first, "alice", "fixed?", result)
    assert new_id == str(uuid5(run.id, f"{first}:promotion:1"))
    events = _appended(run)
    assert [type(e) for e in events] == [RecordPromoted, RecordRequarantined]
    assert events[0].requarantined_as == new_id
    again = events[1]
    assert (again.previous_id, again.step, again.record, again.reason) == (
        first, "a", 7, "bad",
    )  # fmt: skip
    assert run.quarantine_states == {first: PROMOTED, new_id: PENDING}

    # The new record is promoted in its own right, its own promotions from 1.
    promote(run, new_id, "bob", "", PromotionResult(WRITTEN, "a", 1))
    assert _appended(run)[0].promotion == 1
    assert run.quarantine_states[new_id] == PROMOTED


def test_a_failed_promotion_leaves_the_record_pending_and_counts() -> None:
    run = _run()
    first = _quarantined(run)
    failed = PromotionResult(FAILED, "a", 0, "ValueError", "no database")

    promote(run, first, "alice", "retry", failed)
    assert run.quarantine_states[first] == PENDING
    assert first not in run.quarantine_decisions
    promote(run, first, "alice", "retry", PromotionResult(WRITTEN, "a", 1))
    numbers = [e.promotion for e in _appended(run) if isinstance(e, RecordPromoted)]
    assert numbers == [1, 2]
    assert run.quarantine_states[first] == PROMOTED


def test_an_unknown_record_is_refused() -> None:
    run = _run()
    _quarantined(run)
    _appended(run)

    with pytest.raises(ControlRefused, match="has no quarantined record"):
        promote(run, str(uuid4()), "alice", "", PromotionResult(WRITTEN, "a", 1))
    assert _appended(run) == []


def test_a_discarded_record_is_refused_naming_who_discarded_it() -> None:
    run = _run()
    first = _quarantined(run)
    discard(run, first, "carol", "a test row")
    _appended(run)

    with pytest.raises(ControlRefused, match=r"discarded by carol \(a test row\)"):
        promote(run, first, "alice", "", PromotionResult(WRITTEN, "a", 1))
    assert _appended(run) == []
    assert run.quarantine_states[first] == DISCARDED


def test_an_already_promoted_record_is_refused() -> None:
    run = _run()
    first = _quarantined(run)
    promote(run, first, "alice", "fixed", PromotionResult(WRITTEN, "a", 1))
    _appended(run)

    with pytest.raises(ControlRefused, match="already promoted by alice"):
        promote(run, first, "bob", "", PromotionResult(WRITTEN, "a", 1))
    assert _appended(run) == []


def test_a_promotion_waits_while_a_live_worker_holds_the_run() -> None:
    run = _run()
    first = _quarantined(run)
    lease = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    run.start_attempt(current_worker(), lease)
    _appended(run)

    with pytest.raises(ControlRefused, match="is being worked on by attempt 2"):
        promote(run, first, "alice", "", PromotionResult(WRITTEN, "a", 1))
    assert _appended(run) == []

    # A discard does not wait: the worker applies its appends on top of it.
    discard(run, first, "alice", "a test row")
    assert run.quarantine_states[first] == DISCARDED


def test_only_a_whole_payload_may_stand_in_for_the_record() -> None:
    assert payload_is_whole("x17")
    assert payload_is_whole({"n": 1, "rows": [1, 2]})
    assert payload_is_whole(0)
    assert not payload_is_whole(None)

    # Text of the preview's size may have been cut, in characters or bytes.
    assert not payload_is_whole("a" * PAYLOAD_PREVIEW_CHARS)
    assert not payload_is_whole("é" * (PAYLOAD_PREVIEW_CHARS // 2))
    assert payload_is_whole("a" * (PAYLOAD_PREVIEW_CHARS - 1))


# A two-step job on a list: `parse` reads "text" lines (rejecting those
# that are not numbers) and `check` refuses odd numbers above `limit`.


@dataclass
class Lines:
    lines: list[str]
    gone: bool = False
    written: dict[str, list[tuple[int, Any]]] | None = None


class Parse:
    name = "parse"
    position_kind = "line"

    def __init__(self, lines: Lines) -> None:
        self.lines = lines

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        if self.lines.gone:
            raise FileNotFoundError("the source is gone")
        start = after.position if after else 0
        for number, text in enumerate(self.lines.lines[start:], start=start + 1):
            yield Record(number=number, position=number, data=text)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        if not record.data.isdigit():
            raise Reject("not_a_number", repr(record.data), record.data)
        return {"n": int(record.data), "secret": "s3"}

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        assert self.lines.written is not None
        self.lines.written.setdefault(self.name, []).extend(
            (r.number, o) for r, o in outputs
        )
        return len(outputs)

    def size(self) -> int | None:
        return None

    def verify(self, written: int) -> None:
        return None


class Check(Parse):
    name = "check"

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        if record.data["n"] == 99:
            raise RuntimeError("the check service is down")
        if record.data["n"] % 2:
            raise Reject("odd", f"{record.data['n']} is odd", record.data)
        return record.data["n"]


class Tiny(Job):
    name = "tiny"
    version = "1"

    def __init__(self, lines: Lines, *, sensitive: bool = False) -> None:
        self.lines = lines
        if sensitive:
            self.sensitive_fields = frozenset({"secret"})

    def open(self, context: RunContext) -> Sequence[Step]:
        return [Parse(self.lines), Check(self.lines)]


@dataclass(frozen=True)
class Quarantined:
    quarantine_id: str
    step: str
    batch: int
    record: int
    payload: Any


def _worked(lines: list[str]) -> tuple[Run, dict[str, Quarantined]]:
    """A run of Tiny's `parse` step over the lines in batches of 3, every
    rejected line quarantined, as the runtime would record it."""
    run = _run(["parse", "check"])
    attempt = run.start_attempt(OTHER_HOST, PAST)
    step, found = Parse(Lines(lines)), {}
    for batch, first in enumerate(range(0, len(lines), 3)):
        chunk = list(step.read(None))[first : first + 3]
        run.start_batch(attempt, "parse", batch, chunk[0].number, PAST)
        for record in chunk:
            try:
                step.handle(record, Counter())
            except Reject as rejection:
                run.quarantine(
                    attempt, "parse", batch, record.number, rejection.reason,
                    rejection.detail, record.data,
                )  # fmt: skip
                found[record.data] = Quarantined(
                    next(reversed(run.quarantine_states)), "parse", batch,
                    record.number, record.data,
                )  # fmt: skip
        run.checkpoint_batch(
            attempt=attempt, step="parse", batch=batch, first_record=chunk[0].number,
            last_record=chunk[-1].number, position=chunk[-1].position,
            position_kind="line", records=len(chunk), written=len(chunk),
            quarantined=0, counters={}, lease_until=PAST,
        )  # fmt: skip
    return run, found


def _promoted(
    run: Run, lines: Lines, record: Quarantined, *, sensitive: bool = False
) -> PromotionResult:
    lines.written = {}
    job = Tiny(lines, sensitive=sensitive)
    context = RunContext(run_id=UUID(str(run.id)), input=SOURCE, params=run.params)
    promotion = FilePromotion(job, context, job.open(context), completed=False)
    try:
        return promotion.promote(run, record)
    finally:
        promotion.close()


def test_a_record_is_read_again_and_goes_through_every_later_step() -> None:
    run, found = _worked(["1", "2", "3", "x4", "5", "6"])

    # The cause was fixed: line 4 now reads 4 at the same position.
    lines = Lines(["1", "2", "3", "4", "5", "6"])
    result = _promoted(run, lines, found["x4"])
    assert (result.outcome, result.step, result.written) == (WRITTEN, "check", 2)
    assert lines.written == {
        "parse": [(4, {"n": 4, "secret": "s3"})],
        "check": [(4, 4)],
    }


def test_a_later_step_rejects_it_in_its_own_batch_with_the_payload_redacted() -> None:
    run, found = _worked(["1", "2", "3", "x5", "6"])

    lines = Lines(["1", "2", "3", "5", "6"])
    result = _promoted(run, lines, found["x5"], sensitive=True)
    assert (result.outcome, result.step, result.error_class) == (
        REJECTED, "check", "Reject",
    )  # fmt: skip
    assert result.detail == "odd: 5 is odd"
    assert result.requarantine == Requarantine(
        step="check", batch=0, record=4, reason="odd", detail="5 is odd",
        payload={"n": 5, "secret": REDACTED},
    )  # fmt: skip
    assert lines.written == {"parse": [(4, {"n": 5, "secret": "s3"})]}


def test_an_error_in_a_later_step_is_a_failure() -> None:
    run, found = _worked(["1", "x99"])

    result = _promoted(run, Lines(["1", "99"]), found["x99"])
    assert (result.outcome, result.step, result.error_class) == (
        FAILED, "check", "RuntimeError",
    )  # fmt: skip
    assert result.detail == "the check service is down"


def test_a_gone_source_falls_back_to_a_whole_payload() -> None:
    run, found = _worked(["1", "2", "3", "x4"])

    # The payload is the line as quarantined: rejected again, as it is.
    result = _promoted(run, Lines([], gone=True), found["x4"])
    assert (result.outcome, result.step) == (REJECTED, "parse")
    assert result.requarantine is not None
    assert result.requarantine.batch == 1


def test_a_cut_or_blanked_payload_is_refused_when_the_source_is_gone() -> None:
    run, found = _worked(["1", "2", "3", "x4"])
    cut = Quarantined(
        found["x4"].quarantine_id, "parse", 1, 4, "x" * PAYLOAD_PREVIEW_CHARS
    )
    short = str(run.id)[:8]

    with pytest.raises(PromotionRefused) as refused:
        _promoted(run, Lines([], gone=True), cut)
    message = str(refused.value)
    assert "source cannot be read again (FileNotFoundError" in message
    assert "not the whole record" in message
    assert "discard it (`ledger quarantine discard" in message
    assert f"`ledger rerun {short} --from step:parse`" in message

    with pytest.raises(PromotionRefused, match="names sensitive fields"):
        _promoted(run, Lines([], gone=True), found["x4"], sensitive=True)


def test_a_record_the_source_no_longer_holds_falls_back_too() -> None:
    run, found = _worked(["1", "2", "3", "x4"])

    # The source is shorter now: record 4 is not where batch 1 starts.
    result = _promoted(run, Lines(["1", "2", "3"]), found["x4"])
    assert (result.outcome, result.step) == (REJECTED, "parse")
