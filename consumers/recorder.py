"""A consumer's run in the ledger: claimed, recorded, checkpointed.

Everything here is synchronous and knows nothing of Kafka's client: it is
what the consumer asks of the ledger, one call per fact. The consumer runs
these calls off the event loop, one at a time.

The checkpoint is the heart of it. The batch's `MessagesCheckpointed`
event, its quarantined messages and the next offset to read of every
partition it covers are saved in one transaction. The store refuses the
whole save when any of those positions does not move forward: another
consumer (a newer owner of the partition) recorded it first. Then the
partitions that still move forward are saved again on their own, and the
refused ones are recorded as superseded, so that history shows the late
checkpoint and no position ever moves backwards.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import uuid4

import orjson
import structlog
from eventsourcing.persistence import PersistenceError

from consumers.batch import Handled, Poison
from consumers.job import ConsumerContext, ConsumerJob
from consumers.sealed_message import poison_id, seal_poison
from ledger.attempt import ended_by, preview_payload, record_refusal, save_run
from ledger.controls import PausedAtBoundary
from ledger.effects import EffectRegistry
from ledger.errors import LedgerUnavailable, RunHeld, Superseded
from ledger.input_runs import InputRuns
from ledger.keys import consumer_site
from ledger.messages import (
    CONSUME_STEP,
    assign_partitions,
    checkpoint_messages,
    partition_key,
    quarantine_message,
    revoke_partitions,
    start_messages,
    supersede_messages,
)
from ledger.policy import use_ledger_policy
from ledger.positions import (
    PositionRefused,
    SourcePosition,
    load_positions,
    save_with_positions,
)
from ledger.redaction import put_in_force
from ledger.run import Run
from ledger.runtime import claim_run, find_run
from ledger.sealed_payloads import BatchSeals
from ledger.store import Ledger
from ledger.worker import lease_until

__all__ = ["Checkpointed", "ConsumerRecorder", "stream_input"]

log = structlog.get_logger(__name__)

# A refused save is retried on the partitions that still move forward; a
# second refusal in a row means another consumer races on them too.
_SAVE_TRIES = 3

# A save refused because the run moved on (an operator's decision, a lease
# renewal) while this attempt still holds it is made again; this many times.
_CONFLICT_TRIES = 10

# How long a consumer waits for an unreachable ledger before it gives up;
# meanwhile nothing is checkpointed and nothing is committed to Kafka.
OUTAGE_SECONDS = float(os.environ.get("LEDGER_OUTAGE_SECONDS", "60"))


def stream_input(job: ConsumerJob, member: str) -> dict[str, Any]:
    """What a consumer run reads, recorded as its input."""
    return {
        "kind": "kafka",
        "name": f"{job.group_id}/{member}",
        "group": job.group_id,
        "topics": sorted(job.topics),
        "member": member,
    }


def consumer_key(job: ConsumerJob, member: str) -> str:
    """The identity of a member's runs: job, version, group and member,
    hashed so that no two of them ever spell the same key."""
    canonical = orjson.dumps([job.name, job.version, job.group_id, member])
    return f"kafka:{hashlib.sha256(canonical).hexdigest()}"


@dataclass(frozen=True)
class Checkpointed:
    """What a checkpoint came to: per partition, the recorded position."""

    accepted: dict[str, int]
    superseded: dict[str, int]


class ConsumerRecorder:
    """The ledger side of one consumer process."""

    def __init__(
        self,
        ledger: Ledger,
        job: ConsumerJob,
        job_ref: str,
        member: str,
        params: dict[str, Any],
    ) -> None:
        self.ledger = ledger
        self.job = job
        self.job_ref = job_ref
        self.member = member
        self.params = params
        self.group = job.group_id
        self.run: Run | None = None
        self.attempt = 0
        self.events = 0

        # How many pauses had been lifted when this consumer last paused.
        self._lifts = 0
        self._effects: EffectRegistry | None = None

    @property
    def current(self) -> Run:
        if self.run is None:
            raise RuntimeError("claim() first")
        return self.run

    @property
    def effects(self) -> EffectRegistry:
        if self._effects is None:
            raise RuntimeError("claim() first")
        return self._effects

    def context(self) -> ConsumerContext:
        return ConsumerContext(
            run_id=self.current.id,
            group=self.group,
            member=self.member,
            params=self.params,
            registry=self.effects,
        )

    def claim(self) -> None:
        """Resumes this member's unfinished run, or starts a new one.

        A run left open by a dead process of the same member is closed as
        crashed first: that is how a batch that killed the process is
        remembered.
        """
        # The ledger's policy, with the job's on top, redacts what this
        # process records and logs from now on.
        use_ledger_policy(self.ledger)
        put_in_force(self.job.policy())
        source = stream_input(self.job, self.member)
        key = consumer_key(self.job, self.member)
        run, index = find_run(self.ledger, key, new_run=False)
        if run is not None and run.is_completed:
            run = None
        if run is None:
            run = Run.start(
                run_id=uuid4(),
                job=self.job.name,
                job_version=self.job.version,
                job_ref=self.job_ref,
                input=source,
                params=self.job.redact(self.params),
                input_key=key,
                steps=[CONSUME_STEP],
            )
            index = index or InputRuns.create(self.job.name, key)
            index.add_run(run.id)
        try:
            self.attempt, _, self.events = claim_run(self.ledger, run, index)
        except RunHeld as held:
            raise RunHeld(
                str(run.id),
                f"{held.holder}; another consumer of group {self.group} runs as "
                f"member {self.member!r}: give this one its own --member",
            ) from None
        self.run = run
        run.start_step(self.attempt, CONSUME_STEP)
        self._save()

        # Effects are keyed by the group, not by this member's run: a
        # message keeps its key whichever member replays it.
        job, group = self.job.name, self.group
        self._effects = EffectRegistry(
            self.ledger,
            run.id,
            self.job.effects,
            lambda step: consumer_site(job, group, step),
        )
        self._effects.at(CONSUME_STEP)

    def positions(self) -> dict[str, int]:
        """The group's recorded positions, by partition key; waits out a
        ledger outage like a save does."""
        found = _patiently(
            lambda: load_positions(self.ledger, self.group),
            time.monotonic() + OUTAGE_SECONDS,
        )
        return {partition_key(p.topic, p.partition): n for p, n in found.items()}

    def record_assigned(self, partitions: list[dict[str, Any]]) -> None:
        self._commit(
            lambda run: assign_partitions(run, self.attempt, self.group, partitions)
        )

    def record_revoked(self, partitions: list[dict[str, Any]]) -> None:
        self._commit(lambda run: revoke_partitions(run, self.attempt, partitions))

    def start_batch(self, ranges: list[dict[str, Any]]) -> int:
        def begin(run: Run) -> None:
            # An operator's pause is honoured here, before the batch begins.
            if run.paused is not None:
                raise PausedAtBoundary
            start_messages(run, self.attempt, ranges, lease_until())

        self._commit(begin)
        return self.current.batches_done.get(CONSUME_STEP, 0)

    def checkpoint(
        self,
        batch: int,
        handled: Handled,
        written: int,
        copies: dict[tuple[str, int], str | None],
        highwaters: dict[str, int | None],
        read_past: dict[str, int] | None = None,
    ) -> Checkpointed:
        """Records the batch and its positions; see the module docstring.

        `read_past` gives, for a partition read to the end of what was
        fetched, the client's position: past the last message when the log
        skips offsets after it (a transaction's marker), so that a fully
        read partition shows no lag and resumes past the gap.
        """
        ranges: list[dict[str, Any]] = []
        for key, (first, last) in sorted(handled.done.items()):
            position = max(last + 1, (read_past or {}).get(key, 0))
            lag = max(0, (highwaters.get(key) or 0) - position)
            ranges.append(
                {
                    "partition": key,
                    "first": first,
                    "last": last,
                    "next": position,
                    "lag": lag,
                }
            )
        tried = {item["partition"]: item["next"] for item in ranges}
        seals = _patiently(
            lambda: seal_poison(self.ledger, self.current, self.group, handled.poison),
            time.monotonic() + OUTAGE_SECONDS,
        )
        superseded: dict[str, int] = {}
        for _ in range(_SAVE_TRIES):
            try:
                refused = [
                    {"partition": key, "next": tried[key], "recorded": position}
                    for key, position in sorted(superseded.items())
                ]
                self._save_checkpoint(
                    batch, ranges, handled, written, copies, refused, seals
                )
                seals.settle(self.current)
                return Checkpointed(
                    accepted={item["partition"]: item["next"] for item in ranges},
                    superseded=superseded,
                )
            except PositionRefused:
                # The pending events are gone with the refused save; start
                # again from the store, keeping what still moves forward.
                self.run = self._reload(time.monotonic() + OUTAGE_SECONDS)

                # Or the attempt itself is over (an operator abandoned the
                # run, another worker took it): nothing more is recorded.
                if not self.run.attempt_open or self.run.attempt != self.attempt:
                    record_refusal(
                        self.ledger, self.run, self.attempt, ["MessagesCheckpointed"]
                    )
                    raise Superseded(
                        str(self.run.id), self.attempt, ended_by(self.run)
                    ) from None
                recorded = self.positions()
                superseded.update(
                    {
                        item["partition"]: recorded[item["partition"]]
                        for item in ranges
                        if item["next"] <= recorded.get(item["partition"], -1)
                    }
                )
                ranges = [
                    item for item in ranges if item["partition"] not in superseded
                ]
        raise PositionRefused(self._positions(ranges))

    def _save_checkpoint(
        self,
        batch: int,
        ranges: list[dict[str, Any]],
        handled: Handled,
        written: int,
        copies: dict[tuple[str, int], str | None],
        refused: list[dict[str, Any]],
        seals: BatchSeals,
    ) -> None:
        kept = {item["partition"] for item in ranges}
        poison = [p for p in handled.poison if _key(p) in kept]

        def record(run: Run) -> None:
            if refused:
                supersede_messages(run, self.attempt, batch, refused)
            for item in poison:
                self._quarantine(run, batch, item, copies, seals)
            if ranges:
                checkpoint_messages(
                    run,
                    attempt=self.attempt,
                    batch=batch,
                    ranges=ranges,
                    records=sum(
                        count for key, count in handled.counts.items() if key in kept
                    ),
                    written=written,
                    quarantined=len(poison),
                    counters=dict(handled.counters),
                    lease_until=lease_until(),
                )

        self._commit(record, self._positions(ranges))

        # Only now are they facts: a refused save recorded none of them.
        for item in poison:
            log.warning(
                "message.quarantined",
                run_id=str(self.current.id),
                topic=item.message.topic,
                partition=item.message.partition,
                offset=item.message.offset,
                reason=item.reason,
                error_class=item.error_class,
            )

    def _quarantine(
        self,
        run: Run,
        batch: int,
        item: Poison,
        copies: dict[tuple[str, int], str | None],
        seals: BatchSeals,
    ) -> None:
        message = item.message
        quarantine_message(
            run,
            attempt=self.attempt,
            batch=batch,
            group=self.group,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=str(self.job.redact(item.reason)),
            error_class=item.error_class,
            detail=str(self.job.redact("; ".join([item.detail, *item.notes])))[:500],
            tries=item.tries,
            crashes=item.crashes,
            copied_to=copies.get((_key(item), message.offset)),
            payload=preview_payload(self.job.preview(message)),
            sealed=seals.get(run, poison_id(self.group, item)),
        )

    def _positions(self, ranges: list[dict[str, Any]]) -> dict[SourcePosition, int]:
        positions = {}
        for item in ranges:
            topic, _, rest = item["partition"].rpartition("[")
            position = SourcePosition(self.group, topic, int(rest.rstrip("]")))
            positions[position] = item["next"]
        return positions

    def complete(self) -> None:
        """A clean stop: the run ends; the next start begins a new one."""

        def record(run: Run) -> None:
            run.complete_step(self.attempt, CONSUME_STEP)
            run.complete(self.attempt, dict(run.totals))

        self._commit(record)

    def fail(self, error_class: str, message: str) -> None:
        """Records why this attempt stopped; the next start resumes the run."""
        self.run = self._reload(time.monotonic() + OUTAGE_SECONDS)
        if self.run.attempt_open and self.run.attempt == self.attempt:
            self._commit(
                lambda run: run.fail(
                    self.attempt,
                    CONSUME_STEP,
                    None,
                    error_class,
                    str(self.job.redact(message))[:2000],
                )
            )

    def pause_asked(self) -> bool:
        """Whether an operator asked this run to pause; reads only what was
        appended since this process last saw the run."""
        current = self.current
        self.run = _patiently(
            lambda: self.ledger.refreshed(current), time.monotonic() + OUTAGE_SECONDS
        )
        return self.current.paused is not None

    def acknowledge_pause(self) -> None:
        self._commit(lambda run: run.acknowledge_pause(self.attempt))
        self._lifts = self.current.pauses_lifted

    def still_paused(self) -> bool:
        """Whether the pause holds; Superseded once the attempt has ended
        (an operator abandoned the paused run, another worker took it)."""
        current = self.current
        self.run = _patiently(
            lambda: self.ledger.refreshed(current), time.monotonic() + OUTAGE_SECONDS
        )
        if not self.run.attempt_open or self.run.attempt != self.attempt:
            raise Superseded(str(self.run.id), self.attempt, ended_by(self.run))

        # Lifted, even if paused again since: the consumer goes on, and
        # meets the new pause at its next boundary.
        return self.run.pauses_lifted == self._lifts

    def _save(self) -> None:
        self.events += len(self.current.pending_events)
        save_run(self.ledger, self.current, self.attempt)

    def _commit(
        self,
        record: Callable[[Run], object],
        positions: dict[SourcePosition, int] | None = None,
    ) -> None:
        """Records facts on the run and saves them, surviving a ledger
        outage of up to OUTAGE_SECONDS.

        A save may commit and lose its answer. Then either the ledger
        seems unreachable, or the store's own driver retries the same
        transaction on a new connection and it is refused (its positions
        and its version are taken, by itself). Both ways the run is read
        back, and if the store holds exactly these facts of this attempt,
        the save stands; otherwise they are recorded again, or the refusal
        stands.
        """
        deadline = time.monotonic() + OUTAGE_SECONDS
        delay = 0.1
        conflicts = 0
        while True:
            run = self.current
            before = run.version
            record(run)
            pending = [type(event).__name__ for event in run.pending_events]
            try:
                if positions is None:
                    save_run(self.ledger, run, self.attempt)
                else:
                    save_with_positions(self.ledger, run, positions)
            except (PositionRefused, Superseded) as refusal:
                self.run = self._reload(deadline)
                if self._stored(before, pending):
                    log.info("ledger.commit_confirmed", run_id=str(run.id))
                    self.events += len(pending)
                    return

                # Still this attempt's run: an operator's decision or a lease
                # renewal moved it on, never work. Record the facts again.
                ours = self.run.attempt_open and self.run.attempt == self.attempt
                if ours and isinstance(refusal, Superseded):
                    conflicts += 1
                    if conflicts < _CONFLICT_TRIES:
                        continue
                if not ours:
                    record_refusal(self.ledger, self.run, self.attempt, pending)
                    raise Superseded(
                        str(run.id), self.attempt, ended_by(self.run)
                    ) from refusal
                raise
            except LedgerUnavailable as error:
                if time.monotonic() >= deadline:
                    raise
                log.warning(
                    "ledger.unavailable",
                    run_id=str(run.id),
                    retry_in=round(delay, 2),
                    error=error.reason,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.run = self._reload(deadline)
                if self._stored(before, pending):
                    self.events += len(pending)
                    return
                continue
            self.events += len(pending)
            return

    def _stored(self, before: int, pending: list[str]) -> bool:
        """Whether the run's events after version `before` are exactly the
        ones this attempt just tried to save."""
        if self.current.version != before + len(pending):
            return False
        stored = list(
            self.ledger.repository.event_store.get(self.current.id, gt=before)
        )
        return [type(e).__name__ for e in stored] == pending and all(
            getattr(e, "attempt", self.attempt) == self.attempt for e in stored
        )

    def _reload(self, deadline: float) -> Run:
        """The run as the store holds it, waiting for the ledger to answer."""
        run: Run = _patiently(
            lambda: self.ledger.repository.get(self.current.id), deadline
        )
        return run


_R = TypeVar("_R")


def _patiently(read: Callable[[], _R], deadline: float) -> _R:
    """A read of the ledger, retried with backoff until the deadline."""
    delay = 0.1
    while True:
        try:
            return read()
        except PersistenceError as error:
            if time.monotonic() >= deadline:
                raise LedgerUnavailable(
                    "the ledger", str(error).splitlines()[0]
                ) from error
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _key(item: Poison) -> str:
    return partition_key(item.message.topic, item.message.partition)
