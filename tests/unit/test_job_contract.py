"""What the runtime checks of a job before it records anything."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import write_numbers

from ledger import REDACTED, InputError, Job, RunContext, Step
from ledger.config import parse_ledger_url
from ledger.loader import load_job
from ledger.runtime import describe_input, resolve_params, run_job
from ledger.store import opened


class Secretive(Job):
    name = "secretive"
    version = "1"
    sensitive_fields: ClassVar[frozenset[str]] = frozenset({"card", "token"})

    def open(self, context: RunContext) -> Sequence[Step]:
        return []


def test_sensitive_fields_are_blanked_at_any_depth() -> None:
    payload = {"card": "4111 1111 1111 1111", "rows": [{"token": "t0k", "n": 1}]}
    assert Secretive().redact(payload) == {
        "card": REDACTED,
        "rows": [{"token": REDACTED, "n": 1}],
    }
    assert Secretive().redact("plain text") == "plain text"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": "0"}, "must be at least 1"),
        ({"max_quarantine_ratio": "1.5"}, "between 0 and 1"),
        ({"max_quarantine_ratio": "-0.1"}, "between 0 and 1"),
    ],
)
def test_runtime_parameters_are_checked(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        resolve_params(Secretive(), overrides)


class Twice(Job):
    name = "twice"
    version = "1"

    def open(self, context: RunContext) -> Sequence[Step]:
        numbers = load_job(str(Path(__file__).parent.parent / "jobs" / "numbers.py"))
        steps: Any = numbers.open(context)
        return [steps[0], steps[0]]


def test_repeated_step_names_are_refused_before_recording(
    sqlite_url: str, tmp_path: Path
) -> None:
    source = describe_input(write_numbers(tmp_path / "n.txt", 5))
    job = Twice()
    params = resolve_params(job, {"batch_size": "2"})
    params["output"] = str(tmp_path / "o.sqlite")
    with opened(parse_ledger_url(sqlite_url)) as ledger:
        with pytest.raises(InputError, match="step names repeat"):
            run_job(ledger, job, "twice", source, params)
        assert not ledger.recorder.max_notification_id()


class _RejectingStep:
    """Rejects every record, with a payload holding a card number."""

    name = "check"
    position_kind = "line"

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int | None:
        return None

    def read(self, after: Any) -> Any:
        from ledger import Record

        start = after.position if after else 0
        lines = self.path.read_text().splitlines()
        for number, line in enumerate(lines[start:], start=start + 1):
            yield Record(number=number, position=number, data=line)

    def handle(self, record: Any, counters: Any) -> Any:
        from ledger import Reject

        raise Reject(
            "declined", "card declined", {"card": "4111 1111 1111 1111", "n": 1}
        )

    def write(self, outputs: Any) -> int:
        return len(outputs)


class SecretiveRejects(Secretive):
    def open(self, context: RunContext) -> Sequence[Step]:
        return [_RejectingStep(Path(context.input.path))]


def test_a_file_jobs_quarantined_payload_is_recorded_redacted(tmp_path: Path) -> None:
    source = describe_input(write_numbers(tmp_path / "n.txt", 3))
    job = SecretiveRejects()
    params = resolve_params(job, {"max_quarantine_ratio": "1"})
    with opened(parse_ledger_url(f"sqlite:///{tmp_path}/l.sqlite")) as ledger:
        run_job(ledger, job, __name__, source, params)
        stored = [
            n.state
            for n in ledger.recorder.select_notifications(start=1, limit=100)
            if n.topic.endswith("RecordQuarantined")
        ]
    assert len(stored) == 3
    for state in stored:
        assert b"4111" not in state
        assert REDACTED.encode() in state
