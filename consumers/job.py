"""What a consumer author writes: a consumer job.

A consumer job reads one consumer group's share of some topics. The
runtime (`consumers.consumer`) fetches batches, bounded by count and time;
`handle` turns each message into an output, in offset order within its
partition; `write` stores a batch's outputs; then one ledger transaction
records the batch's checkpoint and the next offset to read of every
partition it covers. Only then is the offset committed to Kafka.

The contract a consumer job must keep:

- `write` must be replay-safe: a batch whose checkpoint did not commit is
  handled and written again, by this consumer or by the partition's next
  owner. Key every output by (topic, partition, offset) and upsert.
- `handle` raises `ledger.Reject` for a message that breaks the job's
  rules: it is quarantined at once. Any other exception is retried per
  `retry`, then the message is quarantined with the error's class.
- Any other write outside the ledger goes through `context.effect`, with
  the key it is given: keys are the same for a message whichever member
  of the group handles it, on every attempt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

import orjson

from ledger.effects import EffectPolicy
from ledger.errors import LedgerError
from ledger.job import EffectContext
from ledger.redaction import NOTHING, Redaction, for_job

__all__ = [
    "ConsumerContext",
    "ConsumerJob",
    "Message",
    "QuarantinePolicy",
    "RetryPolicy",
]


@dataclass(frozen=True)
class Message:
    """One Kafka record, as a handler sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0

    def json(self) -> Any:
        """The value decoded as JSON; raises on anything else."""
        if self.value is None:
            raise ValueError("the message has no value")
        return orjson.loads(self.value)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a message whose handler raises is tried before quarantine."""

    attempts: int = 3
    backoff_seconds: float = 0.05
    backoff_max_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise LedgerError(
                f"retry attempts {self.attempts}: a message is tried at least "
                "once; set attempts to 1 or more"
            )
        if self.backoff_seconds < 0 or self.backoff_max_seconds < 0:
            raise LedgerError("retry backoff must be 0 seconds or more")

    def delay(self, tries: int) -> float:
        """The pause after the given number of failed tries."""
        return float(
            min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (tries - 1))
        )


@dataclass(frozen=True)
class QuarantinePolicy:
    """Where quarantined messages are copied, and when a crash means poison.

    A message whose handler kills the process records no failure; the
    batch it was in just never ends. Its messages are then handled one
    batch each; a message whose batch of one crashed `max_crashes` times is
    quarantined without being handled again.
    """

    topic_suffix: str | None = ".quarantine"
    max_crashes: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.max_crashes, int) or self.max_crashes < 1:
            raise LedgerError(
                f"max_crashes {self.max_crashes}: set it to 1 or more crashed "
                "batches before a message is quarantined"
            )

    def topic_for(self, topic: str) -> str | None:
        return f"{topic}{self.topic_suffix}" if self.topic_suffix else None


@dataclass(frozen=True)
class ConsumerContext(EffectContext):
    """What a consumer job knows about the run it is executing."""

    run_id: UUID
    group: str
    member: str
    params: dict[str, Any] = field(default_factory=dict)


# How much of a message that is not JSON is read to make its preview.
_PREVIEW_SCAN_BYTES = 64 * 1024


class ConsumerJob(ABC):
    """A named, versioned consumer of some topics in one consumer group."""

    name: ClassVar[str]
    version: ClassVar[str]
    group_id: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]

    # A batch ends at whichever comes first.
    batch_max_records: ClassVar[int] = 500
    batch_max_seconds: ClassVar[float] = 1.0

    retry: ClassVar[RetryPolicy] = RetryPolicy()
    quarantine: ClassVar[QuarantinePolicy] = QuarantinePolicy()

    # Where a partition the ledger has never seen starts, when Kafka has no
    # committed offset for the group either.
    auto_offset_reset: ClassVar[str] = "earliest"

    # Defaults for the job's own parameters, overridden by `--param`.
    parameters: ClassVar[dict[str, Any]] = {}

    counter_labels: ClassVar[dict[str, str]] = {}

    # Fields whose values never reach the ledger or the logs.
    sensitive_fields: ClassVar[frozenset[str]] = frozenset()

    # More to redact before anything is recorded: field names, dotted paths
    # and named patterns, added to the ledger-wide policy.
    redaction: ClassVar[Redaction] = NOTHING

    # The side effects `handle` and `write` make through `context.effect`,
    # by name, and whether each downstream honours idempotency keys.
    effects: ClassVar[dict[str, EffectPolicy]] = {}

    def redact(self, payload: Any) -> Any:
        """The payload (or text) as it may be recorded."""
        return self.policy().redact(payload)

    def policy(self) -> Redaction:
        """The policy in force for this job: the ledger-wide one, its own
        `redaction`, and its `sensitive_fields` as field names."""
        return for_job(self.redaction, self.sensitive_fields)

    def preview(self, message: Message) -> Any:
        """What the ledger keeps of a quarantined message: its value as
        JSON when it is JSON, redacted, else its first bytes as redacted
        text. Headers are not kept."""
        try:
            return self.redact(message.json())
        except ValueError:
            raw = message.value or b""

            # Fields cannot be found for sure in what does not parse: when
            # the job names sensitive fields, none of its bytes are kept.
            if self.sensitive_fields:
                return f"[{len(raw)} bytes, not JSON: withheld, sensitive fields]"

            # Redacted whole, then cut: a cut first could leave half a
            # secret that no pattern recognises.
            text = raw[:_PREVIEW_SCAN_BYTES].decode("utf-8", "replace")
            return str(self.redact(text))[:500]

    def open(self, context: ConsumerContext) -> None:  # noqa: B027 - optional
        """Prepares the output, once per process."""

    @abstractmethod
    def handle(self, message: Message, counters: Counter[str]) -> Any:
        """The message's output; raise `ledger.Reject` to quarantine it."""

    @abstractmethod
    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        """Stores a batch's outputs, replay-safe; returns how many."""

    def close(self) -> None:  # noqa: B027 - optional
        """Releases what `open` took."""
