"""Handling one fetched batch: messages in offset order, poison set aside.

This part knows nothing of Kafka's client or of the store: it takes the
messages, the run (for its crash history) and the job, and says what was
handled, what must be quarantined and how far each partition got. The
consumer records that in the ledger.

Two kinds of poison are caught:

- a message whose handler raises is tried `retry.attempts` times, then
  quarantined with the error's class;
- a message whose handler kills the process leaves its batch started and
  never checkpointed. The next attempt handles the messages that batch
  held one batch each (suspects), so the next crash pins the message
  down, and once it crashed the worker `max_crashes` times while handled
  alone, it is quarantined without being handled again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from consumers.job import ConsumerJob, Message
from ledger.job import Reject
from ledger.messages import crash_count, crashed_alone
from ledger.run import Run

__all__ = ["Handled", "Poison", "handle_batch", "split_suspects"]

Batch = dict[str, list[Message]]


@dataclass(frozen=True)
class Poison:
    """A message to quarantine, and why."""

    message: Message
    reason: str
    error_class: str
    detail: str
    tries: int
    crashes: int

    # What else befell it on the way to quarantine (a failed copy).
    notes: list[str] = field(default_factory=list)


@dataclass
class Handled:
    """What a batch came to."""

    outputs: list[tuple[Message, Any]] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)

    # Per partition: (first, last) offsets handled, in order, none skipped
    # (the log itself may skip offsets), and how many messages that was.
    done: dict[str, tuple[int, int]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)


def _is_suspect(run: Run, message: Message) -> bool:
    return crash_count(run, message.topic, message.partition, message.offset) > 0


def split_suspects(run: Run, batch: Batch) -> Iterator[Batch]:
    """The batch as it should be handled: each suspect message alone, in
    offset order, then everything else together.

    Suspects lead their partition (they are the messages right after its
    position, where the crashed batch began), so handling them first keeps
    every partition in order.
    """
    rest: Batch = {}
    for key, messages in batch.items():
        index = 0
        while index < len(messages) and _is_suspect(run, messages[index]):
            yield {key: [messages[index]]}
            index += 1
        if index < len(messages):
            rest[key] = messages[index:]
    if rest:
        yield rest


def handle_batch(
    job: ConsumerJob,
    run: Run,
    batch: Batch,
    *,
    stopped: Callable[[str], bool],
    begin_record: Callable[[], None] = lambda: None,
) -> Handled:
    """Handles every message of the batch, partition by partition.

    `stopped(partition)` is asked before each message: a partition taken
    from this consumer mid-batch stops there, and only the work done on it
    so far is checkpointed. `begin_record()` is called before each try of
    the handler (the effect registry's).
    """
    handled = Handled()
    for key, messages in batch.items():
        for message in messages:
            if stopped(key):
                break
            _handle_one(job, run, message, handled, begin_record)
            first, _ = handled.done.get(key, (message.offset, message.offset))
            handled.done[key] = (first, message.offset)
            handled.counts[key] += 1
    return handled


def _handle_one(
    job: ConsumerJob,
    run: Run,
    message: Message,
    handled: Handled,
    begin_record: Callable[[], None],
) -> None:
    # A message that crashed the worker often enough while handled alone is
    # not handled again. Crashes of whole batches do not count: a process
    # killed from outside (a deploy, the OOM killer, kill -9) looks the same.
    crashes = crashed_alone(run, message.topic, message.partition, message.offset)
    if crashes >= job.quarantine.max_crashes:
        handled.poison.append(
            Poison(
                message,
                reason="crashed-worker",
                error_class="WorkerCrashed",
                detail=(
                    f"the worker died {crashes} times while this message was "
                    f"handled alone (max_crashes {job.quarantine.max_crashes})"
                ),
                tries=0,
                crashes=crashes,
            )
        )
        return

    # Retry what raises; a rejection is the job's verdict, final at once.
    for tries in range(1, job.retry.attempts + 1):
        try:
            begin_record()
            handled.outputs.append((message, job.handle(message, handled.counters)))
            return
        except Reject as rejection:
            handled.poison.append(
                Poison(
                    message,
                    rejection.reason,
                    "Reject",
                    str(job.redact(rejection.detail)),
                    tries,
                    crashes,
                )
            )
            return
        except Exception as error:
            if tries < job.retry.attempts:
                _pause(job, tries)
                continue
            handled.poison.append(
                Poison(
                    message,
                    reason="handler-error",
                    error_class=type(error).__name__,
                    # Redacted whole, then cut: half a secret matches no rule.
                    detail=str(job.redact(str(error)))[:500],
                    tries=tries,
                    crashes=crashes,
                )
            )


def _pause(job: ConsumerJob, tries: int) -> None:
    delay = job.retry.delay(tries)
    if delay > 0:
        time.sleep(delay)
