"""Promoting a file job's quarantined record: the job's own code, again.

A promotion is a new attempt of one record. The run's own job is loaded
and checked as `ledger resume` checks it (same version, same input
bytes, an output apart from the ledger), opened with the run's context,
and given the record:

1. read again from its step's source, from the checkpoint before its
   batch, at most one batch far;
2. failing that (the source is gone: the flights job deletes its staging
   once a run completes), the whole record its quarantine sealed (see
   `ledger.sealing`), unless its key was destroyed;
3. for a record quarantined before payloads were sealed, its payload
   preview, but only when it is the whole record: not cut to the
   preview's size, and not blanked, since a job that names sensitive
   fields never had them recorded and a blanked record must never be
   written downstream.

The record then goes through the step's `handle` and `write` and through
every later step of the job, each step's output being the next step's
record data (see `ledger.job`). A `Reject` anywhere quarantines it again
at that step; any other exception is a failure, and the record stays
pending. Nothing here records anything: the caller records the outcome.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from uuid import UUID

import orjson
import structlog

from ledger.attempt import PAYLOAD_PREVIEW_CHARS, preview_payload
from ledger.checkpoint import Checkpoint
from ledger.config import LedgerLocation
from ledger.controls import ControlRefused
from ledger.effects import EffectRegistry, EffectsFor, EffectUncertain
from ledger.errors import InputError, LedgerError
from ledger.job import Job, Record, Reject, RunContext, Step
from ledger.keys import file_site
from ledger.patterns import has_mark
from ledger.quarantine import (
    FAILED,
    REJECTED,
    WRITTEN,
    PromotionResult,
    Requarantine,
)
from ledger.redaction import enforced
from ledger.resuming import check_input, keep_apart, prepare_resume
from ledger.run import Run
from ledger.sealing import SealedPayloadError

if TYPE_CHECKING:
    from ledger.sealed_payloads import SealedPayloads
    from projections.quarantine import QuarantinedRecord
    from projections.views import RunView

__all__ = [
    "FilePromotion",
    "MessagePromotionOpener",
    "Promoter",
    "PromotionRefused",
    "QuarantinedLike",
    "effect_waits",
    "open_file_promotion",
    "payload_is_whole",
]

log = structlog.get_logger(__name__)


class PromotionRefused(ControlRefused):
    """The record cannot be given to the job's code again."""


class QuarantinedLike(Protocol):
    """What a file promotion needs to know of a quarantined record: the
    read side's record and the stored `Run.RecordQuarantined` both are."""

    @property
    def quarantine_id(self) -> str: ...

    @property
    def step(self) -> str: ...

    @property
    def batch(self) -> int: ...

    @property
    def record(self) -> int: ...

    @property
    def payload(self) -> Any: ...


class Promoter(Protocol):
    """A run's job, opened once, promoting its records one at a time."""

    def promote(
        self,
        run: Run,
        record: QuarantinedRecord,
        payloads: SealedPayloads | None = None,
    ) -> PromotionResult: ...

    def close(self) -> None: ...


# How a consumer run's job is opened for a promotion: given the run and
# the bootstrap servers asked for. The Kafka adapter provides it; the
# ledger never imports the consumers package.
MessagePromotionOpener = Callable[["RunView", str | None, EffectsFor], Promoter]


def payload_is_whole(payload: Any) -> bool:
    """Whether a quarantined payload may be the whole record.

    Text of the preview's length may have been cut, and so may a
    structured payload too large to keep, which is stored as its cut JSON
    text (see `ledger.attempt.preview_payload`); text whose UTF-8 reaches
    the cap is counted as cut too, erring towards a refusal. A payload
    the redaction policy changed is not the record either.
    """
    if payload is None:
        return False
    if has_mark(orjson.dumps(payload, default=str).decode()):
        return False
    if isinstance(payload, str):
        encoded = payload.encode("utf-8", "replace")
        return max(len(payload), len(encoded)) < PAYLOAD_PREVIEW_CHARS
    return True


class FilePromotion:
    """A file job opened with its run's context, to promote its records."""

    def __init__(
        self,
        job: Job,
        context: RunContext,
        steps: Sequence[Step],
        *,
        completed: bool,
    ) -> None:
        self.job = job
        self.context = context
        self.steps = list(steps)
        self.completed = completed

    def close(self) -> None:
        """Closes the job as a run in the same state would be closed: a
        completed run's job tidies what it keeps only while running."""
        self.job.close(self.context, completed=self.completed)

    def promote(
        self,
        run: Run,
        record: QuarantinedLike,
        payloads: SealedPayloads | None = None,
    ) -> PromotionResult:
        """The record through its step and every later one; `payloads`
        opens its sealed payload when the source no longer holds it."""
        names = [step.name for step in self.steps]
        if record.step not in names:
            raise PromotionRefused(
                f"record {record.quarantine_id} was quarantined by step "
                f"{record.step}, which {self.job.name} no longer has "
                f"({', '.join(names)}); discard it"
            )
        index = names.index(record.step)

        # The record as the step read it; else its payload, when whole.
        found, unread = self._read_again(run, self.steps[index], record)
        if found is None:
            found = self._from_payload(run, record, unread, payloads)
        with enforced(self.job.policy()):
            result = _run_through(
                run, self.steps[index:], found, self.job.redact, self.context.registry
            )
        log.info(
            "record.promoted",
            run_id=str(run.id),
            quarantine_id=record.quarantine_id,
            step=result.step,
            outcome=result.outcome,
            from_source=not unread,
        )
        return result

    def _read_again(
        self, run: Run, step: Step, record: QuarantinedLike
    ) -> tuple[Record | None, str]:
        """The record from its step's source, or None and why not."""
        after: Checkpoint | None = None
        if record.batch > 0:
            log_of_step = run.batch_log.get(record.step, [])
            if len(log_of_step) < record.batch:
                return None, (
                    f"batch {record.batch - 1} of step {record.step} is no longer "
                    "checkpointed, so its source cannot be found"
                )
            after = log_of_step[record.batch - 1]["checkpoint"]
        batch_size = int(run.params["batch_size"])
        try:
            records: Iterator[Record] = iter(step.read(after))
            try:
                for item in itertools.islice(records, batch_size):
                    if item.number == record.record:
                        return item, ""
            finally:
                close = getattr(records, "close", None)
                if callable(close):
                    close()
        except Exception as error:
            return None, (
                f"step {record.step}'s source cannot be read again "
                f"({type(error).__name__}: {error})"
            )
        return None, (
            f"step {record.step}'s source no longer holds record "
            f"{record.record:,} in batch {record.batch}"
        )

    def _from_payload(
        self,
        run: Run,
        record: QuarantinedLike,
        unread: str,
        payloads: SealedPayloads | None,
    ) -> Record:
        # The whole record, sealed; a key destroyed or a payload tampered
        # with is final: the preview never stands in for it.
        try:
            unsealed = payloads.open(run, record.quarantine_id) if payloads else None
        except SealedPayloadError as unreadable:
            why = f"its sealed payload cannot be opened: {unreadable.why}"
            self._refuse(run, record, unread, why)
        if unsealed is not None:
            return Record(
                number=record.record, position=record.record, data=unsealed.payload
            )

        if self.job.sensitive_fields:
            why = (
                f"{self.job.name} names sensitive fields, so its quarantined "
                "payload may be blanked and must never be written downstream"
            )
        elif not payload_is_whole(record.payload):
            why = (
                "its quarantined payload is not the whole record (none kept, or "
                f"cut at {PAYLOAD_PREVIEW_CHARS:,} characters)"
            )
        else:
            return Record(
                number=record.record, position=record.record, data=record.payload
            )
        self._refuse(run, record, unread, why)

    def _refuse(
        self, run: Run, record: QuarantinedLike, unread: str, why: str
    ) -> NoReturn:
        short = str(run.id)[:8]
        raise PromotionRefused(
            f"record {record.quarantine_id} cannot be promoted: {unread}, and "
            f"{why}; discard it (`ledger quarantine discard "
            f"{record.quarantine_id[:8]} --reason TEXT`), or rerun its step "
            f"(`ledger rerun {short} --from step:{record.step}`)"
        )


def _run_through(
    run: Run,
    steps: Sequence[Step],
    record: Record,
    redact: Callable[[Any], Any],
    effects: EffectRegistry | None = None,
) -> PromotionResult:
    """Each step handles and writes the record; its output is the next
    step's record data. Effects' outcomes are recorded before it returns."""
    try:
        return _through_steps(run, steps, record, redact, effects)
    finally:
        if effects is not None:
            effects.flush_quietly()


def _through_steps(
    run: Run,
    steps: Sequence[Step],
    record: Record,
    redact: Callable[[Any], Any],
    effects: EffectRegistry | None,
) -> PromotionResult:
    written = 0
    for step in steps:
        if effects is not None:
            effects.at(step.name)
        counters: Counter[str] = Counter()
        if effects is not None:
            effects.begin_record()
        try:
            output = step.handle(record, counters)
        except EffectUncertain as uncertain:
            raise effect_waits(uncertain) from None
        except Reject as rejection:
            again = Requarantine(
                step=step.name,
                batch=_batch_of(run, step.name, record.number),
                record=record.number,
                reason=rejection.reason,
                detail=str(redact(rejection.detail))[:500],
                payload=preview_payload(redact(rejection.payload)),
                whole=rejection.payload,
            )
            return PromotionResult(
                REJECTED, step.name, written, "Reject", redact(str(rejection)), again
            )
        except Exception as error:
            return PromotionResult(
                FAILED, step.name, written, type(error).__name__, redact(str(error))
            )

        if effects is not None:
            effects.begin_record()
        try:
            written += step.write([(record, output)])
        except Exception as error:
            return PromotionResult(
                FAILED, step.name, written, type(error).__name__, redact(str(error))
            )
        record = Record(number=record.number, position=record.number, data=output)
    return PromotionResult(WRITTEN, steps[-1].name, written)


def effect_waits(uncertain: EffectUncertain) -> PromotionRefused:
    """A promotion refused because the record's effect is still uncertain:
    promoting it would only quarantine it again."""
    return PromotionRefused(
        f"the record waits for a decision on effect {uncertain.key}, which may "
        f"or may not have happened: `ledger effects confirm {uncertain.key} "
        f"--reason TEXT` or `ledger effects retry {uncertain.key} --reason TEXT` "
        "decides it and promotes the record"
    )


def _batch_of(run: Run, step: str, number: int) -> int:
    """The batch of `step` that held record `number`; the step's next batch
    when none of its checkpoints did."""
    for entry in run.batch_log.get(step, []):
        checkpoint: Checkpoint = entry["checkpoint"]
        if checkpoint.first_record <= number <= checkpoint.last_record:
            return checkpoint.batch
    return run.batches_done.get(step, 0)


def open_file_promotion(
    location: LedgerLocation, view: RunView, effects_for: EffectsFor
) -> FilePromotion:
    """The run's own job, checked as `ledger resume` checks it, opened with
    the run's context; its effects keep the run's keys."""
    from ledger.runtime import describe_input

    job, input_path, params = prepare_resume(view, None)
    check_input(job, input_path)
    keep_apart(job, params, location)
    run_id = UUID(view.run_id)
    source = describe_input(Path(input_path))
    registry = effects_for(
        job.effects, lambda step: file_site(run_id, source.sha256, step)
    )
    context = RunContext(run_id=run_id, input=source, params=params, registry=registry)
    try:
        steps = job.open(context)
    except LedgerError:
        raise
    except Exception as error:
        raise InputError(
            job.name,
            f"could not open its input or output ({type(error).__name__}: {error})",
            "check the run's --param values and the files they name",
        ) from error

    # The run's steps must still be the job's, as for a resume.
    names = [step.name for step in steps]
    recorded = [step.step for step in view.steps]
    if recorded and names != recorded:
        job.close(context, completed=False)
        raise InputError(
            job.name,
            f"run {view.run_id} was made with steps {recorded}, the job now has "
            f"{names}",
            f"restore {job.name}'s steps, or discard the record",
        )
    return FilePromotion(job, context, steps, completed=view.state == "completed")
