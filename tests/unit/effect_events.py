"""An effect job's events, through the real runtime, for the schema tests.

A small job (`Notifier`) makes one effect per input line through
`context.effect`; each line names what its call does, so one run stores
every kind of effect event: completed (one with a result too large to
keep), failed with a known and an unknown outcome, repeated after a
failure and after a crash, held as uncertain; then an operator's decisions
and the promotions they lead to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest
from conftest import dead_worker

from ledger import Checkpoint, Job, JobFailed, Record, RunContext, Step
from ledger.effect import Effect
from ledger.effects import EffectOutcomeUnknown, EffectPolicy, promotion_effects
from ledger.keys import file_site
from ledger.promotion import FilePromotion
from ledger.quarantine import promote
from ledger.run import Run
from ledger.runtime import describe_input, file_effects, resolve_params, run_job
from ledger.store import Ledger
from ledger.worker import lease_until

__all__ = ["make_every_effect"]


class WorkerDied(BaseException):
    """Stands for a worker killed during an effect's call: like SIGKILL, it
    passes every handler, so the call's outcome is never recorded."""


def die(key: str) -> Any:
    raise WorkerDied(key)


class Notify:
    """Notifier's one step: each input line names the effect its record makes."""

    name = "notify"
    position_kind = "line"

    def __init__(self, job: Notifier) -> None:
        self.job = job

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        lines = Path(self.job.context.input.path).read_text().splitlines()
        start = after.position if after else 0
        for number, line in enumerate(lines[start:], start=start + 1):
            yield Record(number=number, position=number, data=line)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        return self.job.context.effect(
            record.data, record, lambda key: self.job.call(record.number, key)
        )

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        return len(outputs)

    def verify(self, written: int) -> None:
        """Nothing to count: the effects are the output."""


class Notifier(Job):
    """Sends a notice per record: `mail` to a downstream that honours
    idempotency keys, `fax` to one that does not. The call of a record
    number in `raises` raises that error; record 5's result is too large
    to keep."""

    name = "effects-notifier"
    version = "1.0.0"
    effects: ClassVar[dict[str, EffectPolicy]] = {
        "mail": EffectPolicy(honours_keys=True),
        "fax": EffectPolicy(honours_keys=False),
    }
    context: RunContext

    def __init__(self, raises: dict[int, BaseException] | None = None) -> None:
        self.raises = raises or {}

    def open(self, context: RunContext) -> Sequence[Step]:
        self.context = context
        return [Notify(self)]

    def call(self, number: int, key: str) -> Any:
        if number in self.raises:
            raise self.raises[number]
        if number == 5:
            return "x" * 5000
        return {"record": number, "receipt": key[:8]}


def make_every_effect(ledger: Ledger, folder: Path) -> None:
    """Effects that complete, fail, repeat, are held and are decided."""
    notices = folder / "notices.txt"
    notices.write_text("mail\nmail\nfax\nfax\nmail\n")
    source = describe_input(notices)
    params = resolve_params(Notifier(), {})

    # Attempt 1 mails record 1; record 2's mail is refused and the run fails.
    refused = Notifier({2: ConnectionError("connection refused")})
    with pytest.raises(JobFailed, match="ConnectionError") as failed:
        run_job(ledger, refused, __name__, source, params)
    run_id = UUID(failed.value.run_id)

    # Attempt 2's worker records the intents of records 3 and 5, and dies
    # during each call.
    run: Run = ledger.repository.get(run_id)
    run.start_attempt(dead_worker(), lease_until())
    ledger.save(run)
    dying = file_effects(ledger, Notifier(), run_id, source)
    dying.bind(run.attempt, f"attempt {run.attempt}", lambda: None)
    dying.at("notify")
    for number, name in ((3, "fax"), (5, "mail")):
        with pytest.raises(WorkerDied):
            dying.call(name, Record(number, number, name), die)

    # Attempt 3 repeats record 2's mail after its failure and record 5's
    # after the crash; it holds record 3's fax, and record 4's times out:
    # both records wait in quarantine for an operator.
    timeout = EffectOutcomeUnknown("timed out after sending")
    resumed = run_job(ledger, Notifier({4: timeout}), __name__, source, params)
    assert (resumed.status, resumed.attempt) == ("completed", 3)

    # The operator finds record 3's fax sent, and record 4's not.
    for number, done in ((3, True), (4, False)):
        key = dying.key("fax", Record(number, number, "fax"))
        effect: Effect = ledger.repository.get(key)
        effect.decide(done, "ops@example", f"fax log checked for record {number}")
        ledger.save(effect)

    # Both are promoted, outside any attempt: record 3's fax is not sent
    # again, record 4's is.
    job = Notifier()
    registry = promotion_effects(ledger, run_id, "ops@example")(
        job.effects, lambda step: file_site(run_id, source.sha256, step)
    )
    context = RunContext(run_id=run_id, input=source, params=params, registry=registry)
    promotion = FilePromotion(job, context, job.open(context), completed=True)
    run = ledger.repository.get(run_id)
    waiting = [
        event
        for event in ledger.repository.event_store.get(run_id)
        if isinstance(event, Run.RecordQuarantined)
    ]
    assert [event.record for event in waiting] == [3, 4]
    try:
        for record in waiting:
            result = promotion.promote(run, record)
            assert result.outcome == "written"
            promote(run, record.quarantine_id, "ops@example", "effect decided", result)
    finally:
        promotion.close()
    ledger.save(run)
